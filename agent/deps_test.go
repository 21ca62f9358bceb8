package agent

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the public agent small: the standard library,
// the MQTT client and the public firmware package, nothing else (no
// internal package, no test helper).
func TestDependencies(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range strings.Fields(string(out)) {
		switch {
		case p == "github.com/garrisonhq/garrison/agent", p == "github.com/garrisonhq/garrison/firmware",
			strings.HasPrefix(p, "github.com/eclipse/paho.golang/"):
		default:
			t.Errorf("the agent depends on %s", p)
		}
	}
}
