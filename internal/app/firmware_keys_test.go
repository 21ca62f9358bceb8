package app

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/firmware"
	"github.com/garrisonhq/garrison/internal/event"
)

// FirmwareKeys are a tenant's offline firmware keys in tests: a root and
// one release key the root's keys document trusts. Exported for the
// package's external tests.
type FirmwareKeys struct{ root, release ed25519.PrivateKey }

// TrustFirmwareKeys makes fresh keys for tenant and registers them with
// a's catalog (the store is shared, so with every node's): the root's
// public half and a keys document naming the release key, valid a day.
func TrustFirmwareKeys(tb testing.TB, ctx context.Context, a *App, tenant event.TenantID) FirmwareKeys {
	tb.Helper()
	now := time.Now().UTC()
	_, root, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(tb, err)
	_, rel, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(tb, err)
	require.NoError(tb, a.Firmware().SetRoot(ctx, tenant, "test", root.Public().(ed25519.PublicKey)))
	keys, err := firmware.SignKeys(firmware.KeySet{Expires: now.Add(24 * time.Hour), Version: 1,
		Keys: []firmware.TrustedKey{firmware.NewTrustedKey(rel.Public().(ed25519.PublicKey), now.Add(24*time.Hour))}}, root)
	require.NoError(tb, err)
	_, err = a.Firmware().SetKeys(ctx, tenant, "test", keys)
	require.NoError(tb, err)
	return FirmwareKeys{root: root, release: rel}
}

// Root is the root's public key, as devices are provisioned with it.
func (k FirmwareKeys) Root() ed25519.PublicKey { return k.root.Public().(ed25519.PublicKey) }

// Manifest signs a manifest of art as version for model m1 (minimum
// version 1.0.0, valid a day); it returns the manifest and art's digest.
func (k FirmwareKeys) Manifest(tb testing.TB, art []byte, version string) (manifest []byte, digest string) {
	tb.Helper()
	sum := sha256.Sum256(art)
	digest = hex.EncodeToString(sum[:])
	m := &firmware.Manifest{Signed: firmware.Release{Expires: time.Now().UTC().Add(24 * time.Hour), MinVersion: "1.0.0",
		Models: []string{"m1"}, SHA256: digest, Size: int64(len(art)), Version: version}}
	require.NoError(tb, m.Sign(k.release))
	manifest, err := m.Marshal()
	require.NoError(tb, err)
	return manifest, digest
}

// AddRelease signs art as version for m1 and adds it to a's catalog; it
// returns the release's digest.
func (k FirmwareKeys) AddRelease(tb testing.TB, ctx context.Context, a *App, tenant event.TenantID, art []byte, version string) string {
	tb.Helper()
	mb, digest := k.Manifest(tb, art, version)
	_, err := a.Firmware().AddRelease(ctx, tenant, "test", mb, bytes.NewReader(art))
	require.NoError(tb, err)
	return digest
}
