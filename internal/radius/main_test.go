package radius

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind (a
// listener or reader that did not stop with its context).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
