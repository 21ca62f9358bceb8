//go:build !linux

package main

import "testing"

// onTerminal needs a Linux pseudo-terminal; elsewhere the test is skipped.
func onTerminal(t *testing.T, _ *server, _, _ string, _ ...string) (string, int) {
	t.Skip("pseudo-terminal tests run on Linux only")
	return "", 0
}
