package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// DefaultYAML returns a commented YAML file holding every key at its default
// value. It loads and validates cleanly, and documents each key with its
// environment variable.
func DefaultYAML() string {
	var b strings.Builder
	b.WriteString("# Garrison configuration. Every key is shown at its default.\n")
	b.WriteString("# Precedence: this file < GARRISON_* environment variables < flags.\n")
	def := reflect.ValueOf(Default())
	section := ""
	for _, f := range fields() {
		parent, leaf, nested := strings.Cut(f.key, ".")
		indent := ""
		if nested {
			if parent != section {
				fmt.Fprintf(&b, "\n%s:\n", parent)
				section = parent
			}
			indent = "  "
		} else {
			leaf = f.key
			section = ""
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "%s# %s (env %s)\n", indent, f.help, EnvName(f.key))
		fmt.Fprintf(&b, "%s%s: %s\n", indent, leaf, yamlScalar(def.FieldByIndex(f.index)))
	}
	return b.String()
}

func yamlScalar(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case time.Duration:
		return strconv.Quote(x.String())
	case string:
		return strconv.Quote(x)
	default:
		return fmt.Sprint(x)
	}
}
