package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadDoc: a document is read whole up to its limit, and an oversized
// one is cut at limit+1 bytes so the server still sees it as oversized.
func TestReadDoc(t *testing.T) {
	dir := t.TempDir()
	small, big := filepath.Join(dir, "small"), filepath.Join(dir, "big")
	if err := os.WriteFile(small, []byte("steps: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(big, []byte(strings.Repeat("x", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := readDoc(small, 64); err != nil || string(b) != "steps: []\n" {
		t.Fatalf("small: %q, %v", b, err)
	}
	if b, err := readDoc(big, 64); err != nil || len(b) != 65 {
		t.Fatalf("big: %d bytes, %v; want 65", len(b), err)
	}
	if _, err := readDoc(filepath.Join(dir, "absent"), 64); !os.IsNotExist(err) {
		t.Fatalf("absent: %v", err)
	}
}
