package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/store"
)

func acquire(t *testing.T, s store.Store, name, holder string, now time.Time, ttl time.Duration) (store.Lease, bool) {
	t.Helper()
	var l store.Lease
	var ok bool
	require.NoError(t, s.Update(context.Background(), func(tx store.Tx) (err error) {
		l, ok, err = tx.Leases().Acquire(context.Background(), name, holder, now, now.Add(ttl))
		return err
	}))
	return l, ok
}

// testLeases: a free lease is taken; its holder renews it (keeping when it
// took it); nobody else takes it before it expires, anybody may after;
// release frees it at once and only for its holder; leases of two names
// are apart; bad input changes nothing.
func testLeases(t *testing.T, s store.Store) {
	ctx := context.Background()
	base := t0.UTC().Truncate(time.Microsecond)
	const ttl = 15 * time.Second

	l, ok := acquire(t, s, "ota", "node-a", base, ttl)
	require.True(t, ok)
	require.Equal(t, store.Lease{Name: "ota", Holder: "node-a", AcquiredAt: base, Expires: base.Add(ttl)}, l)

	// Another node, before expiry: refused, told who holds it.
	l, ok = acquire(t, s, "ota", "node-b", base.Add(14*time.Second), ttl)
	require.False(t, ok)
	require.Equal(t, "node-a", l.Holder)
	require.Equal(t, base.Add(ttl), l.Expires, "a refused acquire changes nothing")

	// The holder renews: a later expiry, the same acquisition time.
	l, ok = acquire(t, s, "ota", "node-a", base.Add(5*time.Second), ttl)
	require.True(t, ok)
	require.Equal(t, base, l.AcquiredAt)
	require.Equal(t, base.Add(20*time.Second), l.Expires)
	_, ok = acquire(t, s, "ota", "node-b", base.Add(19*time.Second), ttl)
	require.False(t, ok, "the renewal moved the expiry")

	// Another name is another lease.
	_, ok = acquire(t, s, "mass", "node-b", base, ttl)
	require.True(t, ok)

	// At expiry the lease is free: node-b takes it over.
	l, ok = acquire(t, s, "ota", "node-b", base.Add(20*time.Second), ttl)
	require.True(t, ok)
	require.Equal(t, store.Lease{Name: "ota", Holder: "node-b", AcquiredAt: base.Add(20 * time.Second), Expires: base.Add(35 * time.Second)}, l)
	// The former holder cannot renew what it lost.
	l, ok = acquire(t, s, "ota", "node-a", base.Add(21*time.Second), ttl)
	require.False(t, ok)
	require.Equal(t, "node-b", l.Holder)

	// Release: only by the holder; then anybody takes it at once.
	require.NoError(t, s.Update(ctx, func(tx store.Tx) error {
		ok, err := tx.Leases().Release(ctx, "ota", "node-a")
		require.NoError(t, err)
		require.False(t, ok, "node-a does not hold it")
		ok, err = tx.Leases().Release(ctx, "ota", "node-b")
		require.NoError(t, err)
		require.True(t, ok)
		_, err = tx.Leases().Get(ctx, "ota")
		require.ErrorIs(t, err, store.ErrNotFound)
		ok, err = tx.Leases().Release(ctx, "ota", "node-b")
		require.NoError(t, err)
		require.False(t, ok)
		return nil
	}))
	_, ok = acquire(t, s, "ota", "node-a", base.Add(22*time.Second), ttl)
	require.True(t, ok)

	// Bad input is refused and changes nothing.
	require.NoError(t, s.Update(ctx, func(tx store.Tx) error {
		lz := tx.Leases()
		for _, tc := range []struct {
			name, holder string
			ttl          time.Duration
		}{{"", "node-b", ttl}, {"ota", "", ttl}, {"ota", "node-b", 0}, {"ota", "node-b", -time.Second}} {
			_, _, err := lz.Acquire(ctx, tc.name, tc.holder, base.Add(time.Hour), base.Add(time.Hour+tc.ttl))
			require.ErrorIs(t, err, store.ErrInvalid, "%+v", tc)
		}
		l, err := lz.Get(ctx, "ota")
		require.NoError(t, err)
		require.Equal(t, "node-a", l.Holder)
		m, err := lz.Get(ctx, "mass")
		require.NoError(t, err)
		require.Equal(t, "node-b", m.Holder)
		return nil
	}))
}

// testLeaseContention: nodes racing for one free lease, each in its own
// transaction: exactly one holds it.
func testLeaseContention(t *testing.T, s store.Store) {
	base := t0.UTC().Truncate(time.Microsecond)
	const nodes = 8
	var wg sync.WaitGroup
	won := make(chan string, nodes)
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			holder := fmt.Sprintf("node-%d", i)
			var ok bool
			err := s.Update(context.Background(), func(tx store.Tx) (err error) {
				_, ok, err = tx.Leases().Acquire(context.Background(), "ota", holder, base, base.Add(15*time.Second))
				return err
			})
			if err != nil {
				t.Errorf("%s: %v", holder, err)
				return
			}
			if ok {
				won <- holder
			}
		}()
	}
	wg.Wait()
	close(won)
	var winners []string
	for w := range won {
		winners = append(winners, w)
	}
	require.Len(t, winners, 1, "exactly one node holds the lease")
	var l store.Lease
	require.NoError(t, s.View(context.Background(), func(tx store.Tx) (err error) {
		l, err = tx.Leases().Get(context.Background(), "ota")
		return err
	}))
	require.Equal(t, winners[0], l.Holder)
}
