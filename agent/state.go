package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

const stateFile = "state.json"

// Slot is one half of the simulated A/B layout.
type Slot struct {
	Version string `json:"version"`
	Digest  string `json:"digest"`
}

// trial is an update written to a slot and booted into, not yet confirmed
// by the boot check.
type trial struct {
	Job  string `json:"job"`
	Prev string `json:"prev"` // the slot to return to
}

// persisted is state.json.
type persisted struct {
	Active      string          `json:"active"` // "a" or "b"
	Slots       map[string]Slot `json:"slots"`
	KeysVersion uint64          `json:"keys_version"` // highest keys document accepted
	Trial       *trial          `json:"trial,omitempty"`
	LastJob     string          `json:"last_job,omitempty"`
	LastState   string          `json:"last_state,omitempty"`
	LastReason  string          `json:"last_reason,omitempty"`
}

func other(slot string) string {
	if slot == "a" {
		return "b"
	}
	return "a"
}

func (p persisted) running() Slot { return p.Slots[p.Active] }

func (p *persisted) clone() persisted {
	c := *p
	c.Slots = map[string]Slot{}
	for k, v := range p.Slots {
		c.Slots[k] = v
	}
	if p.Trial != nil {
		t := *p.Trial
		c.Trial = &t
	}
	return c
}

// loadState reads state.json, or returns the factory state (slot a with
// the factory image) when there is none.
func loadState(dir string, factory Slot) (persisted, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return persisted{Active: "a", Slots: map[string]Slot{"a": factory}}, nil
	} else if err != nil {
		return persisted{}, fmt.Errorf("agent: load state: %w", err)
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return persisted{}, fmt.Errorf("agent: load state: %w", err)
	}
	if (p.Active != "a" && p.Active != "b") || p.Slots == nil {
		return persisted{}, fmt.Errorf("agent: load state: active slot %q", p.Active)
	}
	return p, nil
}

func saveState(dir string, p persisted) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, stateFile), b, 0o600); err != nil {
		return fmt.Errorf("agent: save state: %w", err)
	}
	return nil
}

func slotPath(dir, slot string) string { return filepath.Join(dir, "slots", slot+".img") }

// fileDigest returns the hex SHA-256 and size of a file.
func fileDigest(path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}
