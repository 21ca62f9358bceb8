package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Command is a platform request on devices/{id}/commands.
type Command struct {
	ID      string          `json:"id"`
	Name    string          `json:"name"`
	Args    json.RawMessage `json:"args,omitempty"`
	Expires time.Time       `json:"expires,omitzero"`
}

// ErrBadCommand: the command payload is not a JSON object with an id and a
// name.
var ErrBadCommand = errors.New("agent: malformed command")

const maxCommandID = 128

// parseCommand decodes a command payload (untrusted bytes, FuzzParseCommand).
// Unknown fields are ignored (forward compatibility); anything that is not
// one JSON object with a string id and name is refused.
func parseCommand(b []byte) (Command, error) {
	var c Command
	if len(b) > MaxPayload {
		return c, fmt.Errorf("%w: %d bytes", ErrBadCommand, len(b))
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return c, fmt.Errorf("%w: not a JSON object", ErrBadCommand)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&c); err != nil {
		return Command{}, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	if dec.More() {
		return Command{}, fmt.Errorf("%w: trailing data", ErrBadCommand)
	}
	if c.ID == "" || len(c.ID) > maxCommandID {
		return Command{}, fmt.Errorf("%w: id must be 1 to %d characters", ErrBadCommand, maxCommandID)
	}
	return c, nil
}

// commandResult is the command.result event.
type commandResult struct {
	Type   string `json:"type"`
	TS     string `json:"ts"`
	ID     string `json:"id"`
	OK     bool   `json:"ok"`
	Output string `json:"output,omitempty"`
	Error  string `json:"error,omitempty"`
}

// resultCache remembers recent answers so a redelivered command (QoS 1)
// is answered again, not executed twice.
type resultCache struct {
	mu    sync.Mutex
	order []string
	byID  map[string]commandResult
}

const resultCacheSize = 128

func (r *resultCache) get(id string) (commandResult, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	res, ok := r.byID[id]
	return res, ok
}

func (r *resultCache) put(res commandResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byID == nil {
		r.byID = map[string]commandResult{}
	}
	if _, ok := r.byID[res.ID]; !ok {
		r.order = append(r.order, res.ID)
	}
	r.byID[res.ID] = res
	if len(r.order) > resultCacheSize {
		delete(r.byID, r.order[0])
		r.order = r.order[1:]
	}
}

const maxOutput = 16 << 10

func (a *Agent) commandLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-a.commands:
			a.execute(ctx, b)
		}
	}
}

// execute runs one command and answers it with a command.result event.
func (a *Agent) execute(ctx context.Context, b []byte) {
	cmd, err := parseCommand(b)
	if err != nil {
		// Without an id there is nothing to answer to.
		a.log.Warn("agent: command refused", "device", a.cfg.Device, "err", err)
		return
	}
	if prev, ok := a.results.get(cmd.ID); ok {
		a.enqueue(a.topic("events"), prev)
		return
	}
	res := commandResult{Type: "command.result", ID: cmd.ID}
	var after func()
	switch {
	case cmd.Name == "":
		err = fmt.Errorf("%w: name is required", ErrBadCommand)
	case !cmd.Expires.IsZero() && !a.cfg.Clock.Now().Before(cmd.Expires):
		err = fmt.Errorf("command expired at %s", cmd.Expires.UTC().Format(time.RFC3339))
	default:
		res.Output, after, err = a.run(ctx, cmd)
	}
	res.OK = err == nil
	if err != nil {
		res.Error = err.Error()
	}
	if len(res.Output) > maxOutput {
		res.Output = res.Output[:maxOutput]
	}
	res.TS = a.now()
	a.results.put(res)
	a.log.Info("agent: command", "device", a.cfg.Device, "id", cmd.ID, "name", cmd.Name, "ok", res.OK)
	a.enqueue(a.topic("events"), res)
	if after != nil {
		after()
	}
}

// run executes a command by name: application handlers first, then the
// built-ins. after, if set, runs once the answer is queued.
func (a *Agent) run(ctx context.Context, cmd Command) (out string, after func(), err error) {
	if h, ok := a.cfg.Commands[cmd.Name]; ok {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		out, err = h(cctx, cmd.Args)
		return out, nil, err
	}
	switch cmd.Name {
	case "ping":
		return "pong", nil, nil
	case "reboot":
		return "rebooting", a.Reboot, nil
	case "report":
		m, merr := a.metrics()
		if merr != nil {
			a.log.Debug("agent: metrics incomplete", "err", merr)
		}
		b, _ := json.Marshal(m)
		return string(b), func() {
			if err := a.Publish(ctx, "metrics", m); err != nil {
				a.log.Warn("agent: report: metrics not published", "device", a.cfg.Device, "err", err)
			}
		}, nil
	}
	return "", nil, fmt.Errorf("unknown command %q", cmd.Name)
}
