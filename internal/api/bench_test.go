package api_test

import (
	"fmt"
	"testing"

	"github.com/garrisonhq/garrison/internal/store"
)

// BenchmarkWhoami is the cost of an authenticated read: token parse,
// store lookup, constant-time hash compare, routing and JSON rendering.
func BenchmarkWhoami(b *testing.B) {
	e := newEnv(b)
	tok := e.world(b).tokens[store.RoleViewer]
	b.ReportAllocs()
	for b.Loop() {
		if rec := e.do("GET", "/api/v1/whoami", tok, ""); rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}

// BenchmarkCreateTenant is an audited write: decode, one store.Update
// holding the insert and the hash-chained audit append, fsync'd commit.
func BenchmarkCreateTenant(b *testing.B) {
	e := newEnv(b)
	tok := e.world(b).tokens[store.RolePlatformAdmin]
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if rec := e.do("POST", "/api/v1/tenants", tok, fmt.Sprintf(`{"id":"b-%d"}`, i)); rec.Code != 201 {
			b.Fatal(rec.Code, rec.Body.String())
		}
	}
}
