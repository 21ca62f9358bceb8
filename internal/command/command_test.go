package command_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/command"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
	"github.com/garrisonhq/garrison/internal/store/sqlite"
)

// sender stands in for the broker: it records what was published and
// says whether the device is live.
type sender struct {
	mu   sync.Mutex
	live bool
	sent [][]byte
}

func (s *sender) Command(_ event.TenantID, _ event.DeviceID, p []byte) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, p)
	return s.live, nil
}

func setup(t *testing.T) (*command.Service, store.Store, *sender) {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "g.db"))
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	now := time.Now().UTC()
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error {
		for _, tn := range []event.TenantID{"acme", "beta"} {
			if err := tx.Tenants().Create(ctx, store.Tenant{ID: tn, Name: string(tn), CreatedAt: now}); err != nil {
				return err
			}
		}
		for id, state := range map[event.DeviceID]store.DeviceState{"gw-1": store.StateActive, "gw-2": store.StateQuarantined, "gw-3": store.StateSuspended} {
			if err := tx.Devices().Create(ctx, store.Device{Tenant: "acme", ID: id, Model: "m", State: state, CreatedAt: now, UpdatedAt: now}); err != nil {
				return err
			}
		}
		return nil
	}))
	snd := &sender{live: true}
	svc, err := command.New(command.Options{Store: st, Sender: snd})
	require.NoError(t, err)
	return svc, st, snd
}

func TestSendAndComplete(t *testing.T) {
	ctx := context.Background()
	svc, st, snd := setup(t)
	cmd, err := svc.Send(ctx, "acme", "gw-1", command.Request{Name: "ping", Args: json.RawMessage(` {"n": 1} `), TTLSeconds: 60}, "op:alice")
	require.NoError(t, err)
	require.Equal(t, store.CommandSent, cmd.Status)
	require.Equal(t, `{"n": 1}`, string(cmd.Args))
	require.WithinDuration(t, cmd.CreatedAt.Add(time.Minute), cmd.Expires, time.Millisecond)

	// The device gets what the agent parses: id, name, args, expires.
	require.Len(t, snd.sent, 1)
	var p struct {
		ID, Name string
		Args     map[string]any
		Expires  time.Time
	}
	require.NoError(t, json.Unmarshal(snd.sent[0], &p))
	require.Equal(t, cmd.ID, p.ID)
	require.Equal(t, "ping", p.Name)
	require.Equal(t, 1.0, p.Args["n"])
	require.True(t, p.Expires.Equal(cmd.Expires))

	// Audited with the actor, in the same transaction.
	require.NoError(t, st.View(ctx, func(tx store.Tx) error {
		h, err := tx.Audit().Head(ctx, "acme")
		require.NoError(t, err)
		require.Equal(t, "device.command", h.Action)
		require.Equal(t, "op:alice", h.Actor)
		require.Contains(t, string(h.Details), cmd.ID)
		return nil
	}))

	res := func(dev event.DeviceID, id string, ok bool) *event.Event {
		return &event.Event{Tenant: "acme", Device: dev, Kind: event.CommandResult, Time: time.Now(),
			Attrs: map[string]any{"command_id": id, "ok": ok, "output": "pong"}}
	}
	// Another device cannot complete it; an unknown id is dropped.
	require.NoError(t, svc.Result(ctx, res("gw-2", cmd.ID, false)))
	require.NoError(t, svc.Result(ctx, res("gw-1", "cmd-unknown", true)))
	got, err := svc.Get(ctx, "acme", "gw-1", cmd.ID)
	require.NoError(t, err)
	require.Equal(t, store.CommandSent, got.Status)

	require.NoError(t, svc.Result(ctx, res("gw-1", cmd.ID, true)))
	got, err = svc.Get(ctx, "acme", "gw-1", cmd.ID)
	require.NoError(t, err)
	require.Equal(t, store.CommandSucceeded, got.Status)
	require.Equal(t, "pong", got.Output)
	require.False(t, got.CompletedAt.IsZero())

	// Read through another device's path or tenant: not found.
	_, err = svc.Get(ctx, "acme", "gw-2", cmd.ID)
	require.ErrorIs(t, err, store.ErrNotFound)
	_, err = svc.Get(ctx, "beta", "gw-1", cmd.ID)
	require.ErrorIs(t, err, store.ErrNotFound)
}

func TestSendOfflineAndRefusals(t *testing.T) {
	ctx := context.Background()
	svc, _, snd := setup(t)
	snd.live = false
	cmd, err := svc.Send(ctx, "acme", "gw-2", command.Request{Name: "report"}, "op:bob")
	require.NoError(t, err, "a quarantined device still takes commands")
	require.Equal(t, store.CommandOffline, cmd.Status)
	require.Nil(t, cmd.Args)

	for _, tc := range []struct {
		name   string
		tenant event.TenantID
		dev    event.DeviceID
		req    command.Request
		want   error
	}{
		{"unknown device", "acme", "gw-9", command.Request{Name: "ping"}, store.ErrNotFound},
		{"other tenant", "beta", "gw-1", command.Request{Name: "ping"}, store.ErrNotFound},
		{"suspended", "acme", "gw-3", command.Request{Name: "ping"}, command.ErrState},
		{"no name", "acme", "gw-1", command.Request{}, command.ErrInvalid},
		{"bad name", "acme", "gw-1", command.Request{Name: "rm -rf"}, command.ErrInvalid},
		{"args not an object", "acme", "gw-1", command.Request{Name: "ping", Args: json.RawMessage(`[1]`)}, command.ErrInvalid},
		{"ttl too long", "acme", "gw-1", command.Request{Name: "ping", TTLSeconds: 90000}, command.ErrInvalid},
		{"ttl negative", "acme", "gw-1", command.Request{Name: "ping", TTLSeconds: -1}, command.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(snd.sent)
			_, err := svc.Send(ctx, tc.tenant, tc.dev, tc.req, "op")
			require.True(t, errors.Is(err, tc.want), "err = %v, want %v", err, tc.want)
			require.Len(t, snd.sent, n, "nothing published")
		})
	}
}

func TestRedeliver(t *testing.T) {
	ctx := context.Background()
	svc, st, snd := setup(t)
	snd.live = false
	old, err := svc.Send(ctx, "acme", "gw-1", command.Request{Name: "ping"}, "op")
	require.NoError(t, err)
	newer, err := svc.Send(ctx, "acme", "gw-1", command.Request{Name: "report"}, "op")
	require.NoError(t, err)
	expired := store.Command{Tenant: "acme", ID: "cmd-expired", Device: "gw-1", Name: "reboot", Status: store.CommandOffline,
		CreatedBy: "op", CreatedAt: time.Now().Add(-time.Hour), Expires: time.Now().Add(-time.Minute)}
	require.NoError(t, st.Update(ctx, func(tx store.Tx) error { return tx.Commands().Create(ctx, expired) }))
	answered, err := svc.Send(ctx, "acme", "gw-1", command.Request{Name: "ping"}, "op")
	require.NoError(t, err)
	require.NoError(t, svc.Result(ctx, &event.Event{Tenant: "acme", Device: "gw-1", Kind: event.CommandResult, Time: time.Now(),
		Attrs: map[string]any{"command_id": answered.ID, "ok": true}}))
	snd.sent = nil

	// Still offline: nothing is marked sent.
	n, err := svc.Redeliver(ctx, "acme", "gw-1")
	require.NoError(t, err)
	require.Equal(t, 0, n)

	snd.live = true
	snd.sent = nil
	n, err = svc.Redeliver(ctx, "acme", "gw-1")
	require.NoError(t, err)
	require.Equal(t, 2, n, "the two open, unexpired commands")
	var ids []string
	for _, p := range snd.sent {
		var c struct{ ID string }
		require.NoError(t, json.Unmarshal(p, &c))
		ids = append(ids, c.ID)
	}
	require.Equal(t, []string{old.ID, newer.ID}, ids, "oldest first")
	for _, id := range []string{old.ID, newer.ID} {
		c, err := svc.Get(ctx, "acme", "gw-1", id)
		require.NoError(t, err)
		require.Equal(t, store.CommandSent, c.Status)
	}
	c, err := svc.Get(ctx, "acme", "gw-1", "cmd-expired")
	require.NoError(t, err)
	require.Equal(t, store.CommandOffline, c.Status, "an expired command is not sent again")

	// Sent once: a second subscription sends nothing more.
	n, err = svc.Redeliver(ctx, "acme", "gw-1")
	require.NoError(t, err)
	require.Equal(t, 0, n)
}

// relay records the commands handed to the other nodes.
type relay struct {
	mu  sync.Mutex
	ids []string
}

func (r *relay) Relay(_ context.Context, c store.Command) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = append(r.ids, c.ID)
	return nil
}

// TestRelayAndDeliver: a command with no live session on this node is
// relayed (one with a live session is not); the node holding the session
// delivers it once and marks it sent; a command already sent, expired,
// unknown or another device's is not delivered.
func TestRelayAndDeliver(t *testing.T) {
	ctx := context.Background()
	_, st, snd := setup(t)
	var rl relay
	svc, err := command.New(command.Options{Store: st, Sender: snd, Relay: &rl})
	require.NoError(t, err)

	live, err := svc.Send(ctx, "acme", "gw-1", command.Request{Name: "ping"}, "op:alice")
	require.NoError(t, err)
	require.Equal(t, store.CommandSent, live.Status)
	require.Empty(t, rl.ids, "a live session here: nothing relayed")

	snd.live = false
	off, err := svc.Send(ctx, "acme", "gw-1", command.Request{Name: "reboot"}, "op:alice")
	require.NoError(t, err)
	require.Equal(t, store.CommandOffline, off.Status)
	require.Equal(t, []string{off.ID}, rl.ids, "no live session here: relayed")

	// The other node: no session there either, nothing happens.
	other := &sender{}
	ok, err := svc.Deliver(ctx, "acme", "gw-1", off.ID, other)
	require.NoError(t, err)
	require.False(t, ok)
	got, err := svc.Get(ctx, "acme", "gw-1", off.ID)
	require.NoError(t, err)
	require.Equal(t, store.CommandOffline, got.Status)

	// The node holding the session delivers it and marks it sent.
	holder := &sender{live: true}
	ok, err = svc.Deliver(ctx, "acme", "gw-1", off.ID, holder)
	require.NoError(t, err)
	require.True(t, ok)
	require.Len(t, holder.sent, 1)
	var p struct{ ID, Name string }
	require.NoError(t, json.Unmarshal(holder.sent[0], &p))
	require.Equal(t, off.ID, p.ID)
	require.Equal(t, "reboot", p.Name)
	got, err = svc.Get(ctx, "acme", "gw-1", off.ID)
	require.NoError(t, err)
	require.Equal(t, store.CommandSent, got.Status)

	// Not again, nor a command already sent, another device's or an
	// unknown id.
	for _, tc := range []struct {
		dev event.DeviceID
		id  string
	}{{"gw-1", off.ID}, {"gw-1", live.ID}, {"gw-2", off.ID}, {"gw-1", "cmd-nope"}} {
		ok, err = svc.Deliver(ctx, "acme", tc.dev, tc.id, holder)
		require.NoError(t, err)
		require.False(t, ok, "%s/%s", tc.dev, tc.id)
	}
	require.Len(t, holder.sent, 1)

	// An expired command is not delivered.
	exp, err := svc.Send(ctx, "acme", "gw-1", command.Request{Name: "ping", TTLSeconds: 1}, "op:alice")
	require.NoError(t, err)
	late, err := command.New(command.Options{Store: st, Sender: snd, Clock: fixedClock{time.Now().Add(time.Hour)}})
	require.NoError(t, err)
	ok, err = late.Deliver(ctx, "acme", "gw-1", exp.ID, holder)
	require.NoError(t, err)
	require.False(t, ok)
	require.Len(t, holder.sent, 1)
}

type fixedClock struct{ t time.Time }

func (c fixedClock) Now() time.Time { return c.t }
