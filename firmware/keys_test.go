package firmware

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	root, err := Keygen(dir, RoleRoot, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	rel, err := Keygen(dir, RoleRelease, "release-2026", nil)
	if err != nil {
		t.Fatal(err)
	}
	if root.KeyID == rel.KeyID {
		t.Fatal("two generated keys share an id")
	}
	for _, kp := range []KeyPair{root, rel} {
		st, err := os.Stat(kp.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", kp.PrivateKey, st.Mode().Perm())
		}
		priv, err := LoadPrivateKey(kp.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := LoadPublicKey(kp.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		if !pub.Equal(priv.Public()) || KeyID(pub) != kp.KeyID {
			t.Errorf("%s: public key file does not match the private key", kp.PublicKey)
		}
	}
	if filepath.Base(rel.PrivateKey) != "release-2026.key" {
		t.Errorf("private key file %s", rel.PrivateKey)
	}
	before, _ := os.ReadFile(root.PrivateKey)
	if _, err := Keygen(dir, RoleRoot, "", nil); !errors.Is(err, os.ErrExist) {
		t.Fatalf("overwrite: got %v, want os.ErrExist", err)
	}
	after, _ := os.ReadFile(root.PrivateKey)
	if !bytes.Equal(before, after) {
		t.Fatal("Keygen overwrote an existing key")
	}
	for _, bad := range []struct {
		role Role
		name string
	}{{"admin", ""}, {RoleRelease, "../x"}, {RoleRelease, ".."}} {
		if _, err := Keygen(dir, bad.role, bad.name, nil); err == nil {
			t.Errorf("Keygen(%q, %q) accepted", bad.role, bad.name)
		}
	}
	if _, err := ParsePrivateKey(before[:20]); !errors.Is(err, ErrMalformed) {
		t.Errorf("truncated key: %v", err)
	}
	pubPEM, _ := os.ReadFile(root.PublicKey)
	if _, err := ParsePrivateKey(pubPEM); !errors.Is(err, ErrMalformed) {
		t.Errorf("public key as private: %v", err)
	}
}

func TestVerifyKeys(t *testing.T) {
	root, rel := seededKey(1), seededKey(2)
	doc := signedKeys(t, keySet(3, 1, rel), root)
	k, err := VerifyKeys(doc, pubOf(root), t0, 3)
	if err != nil {
		t.Fatal(err)
	}
	if k.Signed.Version != 3 || len(k.Signed.Keys) != 1 || k.Signed.Keys[0].KeyID != KeyID(pubOf(rel)) {
		t.Fatalf("unexpected keys %+v", k.Signed)
	}
	// A manifest signed by the root instead of a keys document, and a keys
	// document whose signature is by a release key.
	byRelease := signedKeys(t, keySet(3, 1, rel), rel)
	tampered := bytes.Replace(doc, []byte(`"version":3`), []byte(`"version":4`), 1)
	expired := signedKeys(t, KeySet{Expires: t0, Version: 4, Keys: keySet(1, 1, rel).Keys}, root)
	for _, tc := range []struct {
		name string
		doc  []byte
		last uint64
		now  time.Time
		want error
	}{
		{"wrong signer", byRelease, 0, t0, ErrSignature},
		{"tampered version", tampered, 0, t0, ErrSignature},
		{"rollback", doc, 4, t0, ErrRollback},
		{"expired", expired, 0, t0, ErrExpired},
		{"garbage", []byte("{"), 0, t0, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := VerifyKeys(tc.doc, pubOf(root), tc.now, tc.last); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSignKeysValidates(t *testing.T) {
	rel := seededKey(2)
	bad := []KeySet{
		{Expires: t0, Version: 0, Keys: keySet(1, 1, rel).Keys},
		{Version: 1, Keys: keySet(1, 1, rel).Keys},
		{Expires: t0, Version: 1, Threshold: 2, Keys: keySet(1, 1, rel).Keys},
		{Expires: t0, Version: 1, Keys: append(keySet(1, 1, rel).Keys, keySet(1, 1, rel).Keys...)},
		{Expires: t0, Version: 1, Keys: []TrustedKey{{Expires: t0, KeyID: strings.Repeat("a", 64), Public: KeyID(pubOf(rel))}}},
	}
	for i, s := range bad {
		if _, err := SignKeys(s, seededKey(1)); !errors.Is(err, ErrMalformed) {
			t.Errorf("case %d: got %v, want ErrMalformed", i, err)
		}
	}
}

func TestVerifyManifest(t *testing.T) {
	root, relA, relB, stranger := seededKey(1), seededKey(2), seededKey(3), seededKey(4)
	r := testRelease([]byte("firmware"))
	keysV1, err := VerifyKeys(signedKeys(t, keySet(1, 1, relA, relB), root), pubOf(root), t0, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Version 2 revokes relA by leaving it out.
	keysV2, err := VerifyKeys(signedKeys(t, keySet(2, 1, relB), root), pubOf(root), t0, 1)
	if err != nil {
		t.Fatal(err)
	}
	keysT2, err := VerifyKeys(signedKeys(t, keySet(3, 2, relA, relB), root), pubOf(root), t0, 0)
	if err != nil {
		t.Fatal(err)
	}
	shortSet := keySet(4, 1, relA)
	shortSet.Keys[0].Expires = t0.Add(time.Hour)
	keysShort, err := VerifyKeys(signedKeys(t, shortSet, root), pubOf(root), t0, 0)
	if err != nil {
		t.Fatal(err)
	}
	parse := func(b []byte) *Manifest {
		t.Helper()
		m, err := ParseManifest(b)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	good := signedManifest(t, r, relA)
	tampered := parse(good)
	tampered.Signed.Size++ // the signature no longer covers the content
	crossDomain := parse(good)
	// A signature by relA over a keys document's bytes must not count.
	kc, _ := (&Keys{Signed: keySet(1, 1, relA)}).Canonical()
	crossDomain.Signatures = addSignature(nil, relA, keysDomain, kc)
	sameKeyTwice := parse(good)
	sameKeyTwice.Signatures = append(sameKeyTwice.Signatures, sameKeyTwice.Signatures[0])

	for _, tc := range []struct {
		name string
		m    *Manifest
		keys *Keys
		now  time.Time
		want error
	}{
		{"good", parse(good), keysV1, t0, nil},
		{"good by B after A revoked", parse(signedManifest(t, r, relB)), keysV2, t0, nil},
		{"threshold 2 met", parse(signedManifest(t, r, relA, relB)), keysT2, t0, nil},
		{"missing signature", parse(signedManifest(t, r)), keysV1, t0, ErrSignature},
		{"untrusted key", parse(signedManifest(t, r, stranger)), keysV1, t0, ErrSignature},
		{"root key is not a release key", parse(signedManifest(t, r, root)), keysV1, t0, ErrSignature},
		{"tampered content", tampered, keysV1, t0, ErrSignature},
		{"revoked key", parse(good), keysV2, t0, ErrSignature},
		{"expired release key", parse(good), keysShort, t0.Add(2 * time.Hour), ErrSignature},
		{"expired manifest", parse(good), keysV1, r.Expires, ErrExpired},
		{"threshold 2, one signature", parse(good), keysT2, t0, ErrSignature},
		{"threshold 2, same key twice", sameKeyTwice, keysT2, t0, ErrSignature},
		{"signature from another domain", crossDomain, keysV1, t0, ErrSignature},
		{"no keys", parse(good), nil, t0, ErrNoTrust},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyManifest(tc.m, tc.keys, tc.now)
			if tc.want == nil && err != nil || !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestVerifyChain(t *testing.T) {
	root, rel := seededKey(1), seededKey(2)
	keys := signedKeys(t, keySet(5, 1, rel), root)
	m, k, err := Verify(signedManifest(t, testRelease([]byte("fw")), rel), keys, pubOf(root), 5, t0)
	if err != nil || m.Signed.Version != "1.2.0" || k.Signed.Version != 5 {
		t.Fatalf("Verify: %v", err)
	}
	if _, _, err := Verify(signedManifest(t, testRelease([]byte("fw")), rel), keys, pubOf(root), 6, t0); !errors.Is(err, ErrRollback) {
		t.Fatalf("rollback: %v", err)
	}
	if _, _, err := Verify(signedManifest(t, testRelease([]byte("fw")), rel), keys, pubOf(rel), 0, t0); !errors.Is(err, ErrSignature) {
		t.Fatalf("wrong root: %v", err)
	}
}

func TestVerifyForDevice(t *testing.T) {
	r := testRelease([]byte("fw")) // models meter-x1, meter-x2; 1.2.0, min 1.0.0
	m := &Manifest{Signed: r}
	for _, tc := range []struct {
		name, model, current string
		now                  time.Time
		want                 error
	}{
		{"upgrade", "meter-x1", "1.1.9", t0, nil},
		{"upgrade from min", "meter-x2", "1.0.0", t0, nil},
		{"upgrade from pre-release", "meter-x2", "1.2.0-rc.1", t0, nil},
		{"other model", "camera-c1", "1.1.0", t0, ErrWrongModel},
		{"model prefix is not a match", "meter-x", "1.1.0", t0, ErrWrongModel},
		{"same version", "meter-x1", "1.2.0", t0, ErrDowngrade},
		{"downgrade", "meter-x1", "2.0.0", t0, ErrDowngrade},
		{"below min_version", "meter-x1", "0.9.9", t0, ErrDowngrade},
		{"expired", "meter-x1", "1.1.0", r.Expires, ErrExpired},
		{"bad current", "meter-x1", "one", t0, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := VerifyForDevice(m, tc.model, tc.current, tc.now)
			if tc.want == nil && err != nil || !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	root, rel := seededKey(1), seededKey(2)
	keys := signedKeys(b, keySet(1, 1, rel, seededKey(3), seededKey(4)), root)
	man := signedManifest(b, testRelease([]byte("fw")), rel)
	b.Run("chain", func(b *testing.B) { // keys document + manifest, from bytes
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := Verify(man, keys, pubOf(root), 1, t0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("manifest", func(b *testing.B) { // parsed keys, manifest from bytes
		k, err := VerifyKeys(keys, pubOf(root), t0, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			m, err := ParseManifest(man)
			if err != nil {
				b.Fatal(err)
			}
			if err := VerifyManifest(m, k, t0); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func FuzzParseKeys(f *testing.F) {
	f.Add(signedKeys(f, keySet(1, 1, seededKey(2), seededKey(3)), seededKey(1)))
	f.Add([]byte(`{"signatures":[],"signed":{"expires":"2027-01-01T00:00:00Z","keys":[],"threshold":0,"version":1}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParseKeys(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("refusal %v does not wrap ErrMalformed", err)
			}
			return
		}
		enc, err := k.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		k2, err := ParseKeys(enc)
		if err != nil {
			t.Fatalf("re-encoded keys refused: %v\n%s", err, enc)
		}
		c1, _ := k.Canonical()
		c2, _ := k2.Canonical()
		if !bytes.Equal(c1, c2) {
			t.Fatalf("canonical form not stable:\n%s\n%s", c1, c2)
		}
		if k.Signed.Required() < 1 || k.Signed.Required() > max(len(k.Signed.Keys), 1) {
			t.Fatalf("threshold %d with %d keys accepted", k.Signed.Threshold, len(k.Signed.Keys))
		}
	})
}
