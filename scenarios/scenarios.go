// Package scenarios is Garrison's own library of labelled fleet scenarios
// (the format of docs/SIMULATOR.md), embedded so that the binary runs the
// demo and the tests run the library from a fresh clone.
package scenarios

import "embed"

// FS holds every *.yaml of the library.
//
//go:embed *.yaml
var FS embed.FS
