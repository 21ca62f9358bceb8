package ota

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"github.com/garrisonhq/garrison/firmware"
	"testing"
	"time"
)

var t0 = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// seededKey returns a deterministic Ed25519 key so failures reproduce.
func seededKey(n byte) ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = n
	}
	return ed25519.NewKeyFromSeed(seed)
}

func pubOf(k ed25519.PrivateKey) ed25519.PublicKey { return k.Public().(ed25519.PublicKey) }

func testRelease(artifact []byte) firmware.Release {
	sum := sha256.Sum256(artifact)
	return firmware.Release{
		Expires:    t0.Add(90 * 24 * time.Hour),
		MinVersion: "1.0.0",
		Models:     []string{"meter-x1", "meter-x2"},
		Notes:      "fixes CVE-2026-0001 <3 & more",
		SHA256:     hex.EncodeToString(sum[:]),
		Size:       int64(len(artifact)),
		Version:    "1.2.0",
	}
}

func signedManifest(t testing.TB, r firmware.Release, keys ...ed25519.PrivateKey) []byte {
	t.Helper()
	m := &firmware.Manifest{Signed: r}
	for _, k := range keys {
		if err := m.Sign(k); err != nil {
			t.Fatal(err)
		}
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func keySet(version uint64, threshold int, keys ...ed25519.PrivateKey) firmware.KeySet {
	s := firmware.KeySet{Expires: t0.Add(365 * 24 * time.Hour), Threshold: threshold, Version: version}
	for _, k := range keys {
		s.Keys = append(s.Keys, firmware.NewTrustedKey(pubOf(k), t0.Add(180*24*time.Hour)))
	}
	return s
}

func signedKeys(t testing.TB, s firmware.KeySet, root ed25519.PrivateKey) []byte {
	t.Helper()
	b, err := firmware.SignKeys(s, root)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
