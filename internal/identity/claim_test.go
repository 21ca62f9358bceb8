package identity

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/garrisonhq/garrison/internal/store"
)

func TestClaimExchange(t *testing.T) {
	ctx := context.Background()
	for name, open := range map[string]func(testing.TB) store.Store{
		"mem":    func(testing.TB) store.Store { return newMemStore() },
		"sqlite": func(t testing.TB) store.Store { return openSQLite(t) },
	} {
		t.Run(name, func(t *testing.T) {
			st := open(t)
			f := newFixture(t, st)
			if _, err := f.svc.EnsureCA(ctx, "acme"); err != nil {
				t.Fatal(err)
			}
			// The factory's claim CA and one model-wide claim certificate.
			caKey := newKey(t)
			caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Factory claim CA"},
				NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
			caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
			caCert, _ := x509.ParseCertificate(caDER)
			claimKey := newKey(t)
			claimTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "m100"},
				NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(365 * 24 * time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
			claimDER, _ := x509.CreateCertificate(rand.Reader, claimTmpl, caCert, claimKey.Public(), caKey)
			claim, _ := x509.ParseCertificate(claimDER)
			chain := []*x509.Certificate{claim}

			csrFor := func(serial string) []byte {
				return makeCSR(t, newKey(t), &x509.CertificateRequest{Subject: pkix.Name{SerialNumber: serial}})
			}
			// Not yet registered as a claim CA: untrusted.
			if _, err := f.svc.ExchangeClaim(ctx, "acme", chain, csrFor("SN-1")); !errors.Is(err, ErrUntrusted) {
				t.Fatalf("before import: %v", err)
			}
			if _, err := f.svc.Import(ctx, "acme", caDER, RoleClaim, "op-1"); err != nil {
				t.Fatal(err)
			}
			err := st.Update(ctx, func(tx store.Tx) error {
				for _, d := range []store.Device{
					{Tenant: "acme", ID: "meter-1", Model: "m100", Serial: "SN-1", State: store.StateRegistered},
					{Tenant: "acme", ID: "meter-2", Model: "m100", Serial: "SN-2", State: store.StateRegistered},
					{Tenant: "acme", ID: "cam-1", Model: "c200", Serial: "SN-3", State: store.StateRegistered},
				} {
					if err := tx.Devices().Create(ctx, d); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, bad := range []struct {
				name, serial string
				want         error
			}{
				{"unregistered serial", "SN-404", ErrUnknownDevice},
				{"serial of another model", "SN-3", ErrUnknownDevice},
				{"no serial", "", ErrBadCSR},
			} {
				if _, err := f.svc.ExchangeClaim(ctx, "acme", chain, csrFor(bad.serial)); !errors.Is(err, bad.want) {
					t.Fatalf("%s: %v, want %v", bad.name, err, bad.want)
				}
			}
			iss, err := f.svc.ExchangeClaim(ctx, "acme", chain, csrFor("SN-1"))
			if err != nil || iss.Record.Device != "meter-1" {
				t.Fatalf("exchange: %v", err)
			}
			if _, err := f.svc.Verify(ctx, "acme", []*x509.Certificate{iss.Cert}); err != nil {
				t.Fatal(err)
			}
			// Once only.
			if _, err := f.svc.ExchangeClaim(ctx, "acme", chain, csrFor("SN-1")); !errors.Is(err, ErrAlreadyEnrolled) {
				t.Fatalf("second exchange: %v", err)
			}
			// The claim certificate is never a device identity itself.
			if _, err := f.svc.Verify(ctx, "acme", chain); !errors.Is(err, ErrUntrusted) {
				t.Fatalf("claim cert verified as device: %v", err)
			}
			// Revoked as a whole: the next device cannot use it.
			if err := f.svc.RevokeClaim(ctx, "acme", claimDER, "op-1"); err != nil {
				t.Fatal(err)
			}
			if _, err := f.svc.ExchangeClaim(ctx, "acme", chain, csrFor("SN-2")); !errors.Is(err, ErrRevoked) {
				t.Fatalf("revoked claim: %v", err)
			}
			// Another tenant does not trust this claim CA.
			if _, err := f.svc.ExchangeClaim(ctx, "other", chain, csrFor("SN-2")); !errors.Is(err, ErrUntrusted) {
				t.Fatalf("foreign tenant: %v", err)
			}
		})
	}
}
