package export_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/clock"
	"github.com/garrisonhq/garrison/internal/export"
	"github.com/garrisonhq/garrison/internal/store"
)

// TestTenantSyslogToSocat: a tenant's own syslog target (a tenant setting,
// audited) receives that tenant's alerts only, first over TCP, then, once
// the target changes, over TLS verified with the CA the tenant gave; bad
// targets are refused and change nothing; a loopback target is refused
// unless private addresses are allowed; deleting the target stops sending.
func TestTenantSyslogToSocat(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	clk := clock.NewManual(t0)
	put := func(tg export.SyslogTarget) error {
		return st.Update(ctx, func(tx store.Tx) error {
			_, err := export.PutSyslogTarget(ctx, tx, tenant, tg, "operator:op-1", clk.Now())
			return err
		})
	}
	auditCount := func() int {
		var n int
		require.NoError(t, st.View(ctx, func(tx store.Tx) error {
			recs, err := tx.Audit().Range(ctx, tenant, 0, 1000)
			n = len(recs)
			return err
		}))
		return n
	}

	certPEM, keyPEM := selfSigned(t)
	for _, bad := range []export.SyslogTarget{
		{Addr: "no-port"}, {Addr: ":514"}, {Addr: "collector:0"}, {Addr: "collector:99999"},
		{Addr: "collector:6514", CAPEM: string(certPEM)},      // a CA without TLS
		{Addr: "collector:6514", TLS: true, CAPEM: "not pem"}, // no certificate
	} {
		require.ErrorIs(t, put(bad), store.ErrInvalid, "%+v", bad)
	}
	require.Zero(t, auditCount(), "refused targets change nothing")

	send := func(ts *export.TenantSyslogs, a alert.Alert) error { return ts.SendAlert(ctx, a) }
	a1, a2 := testAlert("al-t1"), testAlert("al-t2")
	other := testAlert("al-g1")
	other.Tenant = "globex"

	ts, err := export.NewTenantSyslogs(export.TenantSyslogOptions{Store: st, Clock: clk, Hostname: "gw-test", AllowPrivate: true})
	require.NoError(t, err)
	require.NoError(t, send(ts, a1), "no target: nothing to do")

	addr, output := socat(t, "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr")
	require.NoError(t, put(export.SyslogTarget{Addr: addr}))
	require.Equal(t, 1, auditCount(), "syslog.set audited")

	strict, err := export.NewTenantSyslogs(export.TenantSyslogOptions{Store: st, Clock: clk})
	require.NoError(t, err)
	require.ErrorIs(t, send(strict, a1), export.ErrPrivateAddress, "loopback refused unless allowed")

	require.NoError(t, send(ts, a1))
	require.NoError(t, send(ts, other), "globex has no target: nothing sent")

	// The target moves to TLS with the tenant's CA: the old connection is
	// closed (socat ends), the next alert goes to the new collector.
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certFile, certPEM, 0o600))
	require.NoError(t, os.WriteFile(keyFile, keyPEM, 0o600))
	tlsAddr, tlsOutput := socat(t, "OPENSSL-LISTEN:%d,bind=127.0.0.1,reuseaddr,cert="+certFile+",key="+keyFile+",verify=0")
	require.NoError(t, put(export.SyslogTarget{Addr: tlsAddr, TLS: true, CAPEM: string(certPEM)}))
	require.NoError(t, send(ts, a2))

	frames := parseFrames(t, output())
	require.Len(t, frames, 1)
	require.Equal(t, "al-t1", mustFinding(t, frames[0].msg).FindingInfo.UID)
	require.Equal(t, "acme", mustFinding(t, frames[0].msg).Metadata.TenantUID)

	// Deleted: nothing more is sent, and the connection is closed.
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		return export.DeleteSyslogTarget(ctx, tx, tenant, "operator:op-1", clk.Now())
	}))
	require.NoError(t, send(ts, a1))
	frames = parseFrames(t, tlsOutput())
	require.Len(t, frames, 1)
	require.Equal(t, "al-t2", mustFinding(t, frames[0].msg).FindingInfo.UID)
	require.Equal(t, 3, auditCount(), "set, set, delete")
	require.NoError(t, ts.Close())
	require.NoError(t, strict.Close())
}
