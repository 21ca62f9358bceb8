package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestBinaryLinksNoTestCode keeps test helpers out of the shipped binary.
func TestBinaryLinksNoTestCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range strings.Fields(string(out)) {
		switch {
		case p == "testing", strings.HasPrefix(p, "testing/"), strings.Contains(p, "testify"),
			strings.HasSuffix(p, "/storetest"), p == "go.uber.org/goleak":
			t.Errorf("garrison links test package %s", p)
		}
	}
}
