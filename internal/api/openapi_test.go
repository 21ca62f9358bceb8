package api_test

import (
	"encoding/json"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/store"
)

// TestOpenAPIMatchesMux holds the served document and the mux to each
// other: every operation in the document reaches its own route, and every
// route of the table is in the document.
func TestOpenAPIMatchesMux(t *testing.T) {
	e := newEnv(t)
	w := e.world(t)
	rec := e.do("GET", "/api/v1/openapi.json", w.tokens[store.RoleViewer], "")
	require.Equal(t, 200, rec.Code)
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
		Comps   struct {
			Schemas map[string]json.RawMessage `json:"schemas"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &doc))
	require.True(t, strings.HasPrefix(doc.OpenAPI, "3."))

	param := regexp.MustCompile(`\{[a-z_]+\}`)
	var inDoc []string
	for path, ops := range doc.Paths {
		for method := range ops {
			m := strings.ToUpper(method)
			inDoc = append(inDoc, m+" "+path)
			req := httptest.NewRequest(m, param.ReplaceAllString(path, "x1"), nil)
			require.Equal(t, m+" "+path, e.srv.Pattern(req), "document operation %s %s is served by its own route", m, path)
		}
	}
	var inTable []string
	for _, rt := range e.srv.Routes() {
		inTable = append(inTable, rt.Method+" "+rt.Pattern)
	}
	sort.Strings(inDoc)
	sort.Strings(inTable)
	require.Equal(t, inTable, inDoc)

	// Every $ref resolves.
	refs := regexp.MustCompile(`"\$ref":\s*"#/components/schemas/([A-Za-z]+)"`).FindAllStringSubmatch(rec.Body.String(), -1)
	require.NotEmpty(t, refs)
	for _, r := range refs {
		require.Contains(t, doc.Comps.Schemas, r[1])
	}
	// The alert, action and device routes are in it with their filters and
	// response schemas.
	for path, want := range map[string][]string{
		"/api/v1/tenants/{tenant}/alerts":  {"tenant", "device", "kind", "state", "since", "before", "limit"},
		"/api/v1/tenants/{tenant}/actions": {"tenant", "device", "state", "after", "limit"},
		"/api/v1/tenants/{tenant}/devices": {"tenant", "model", "state", "after", "limit"},
	} {
		var opn struct {
			Parameters []struct{ Name string } `json:"parameters"`
		}
		require.Contains(t, doc.Paths, path)
		require.NoError(t, json.Unmarshal(doc.Paths[path]["get"], &opn))
		var got []string
		for _, p := range opn.Parameters {
			got = append(got, p.Name)
		}
		require.ElementsMatch(t, want, got, path)
	}
	for _, name := range []string{"AlertAlert", "StoreAction", "StoreDevice", "ResolveAlertRequest"} {
		require.Contains(t, doc.Comps.Schemas, name)
	}
	require.Contains(t, string(doc.Paths["/api/v1/tenants/{tenant}/alerts/{id}/resolve"]["post"]), "ResolveAlertRequest")
	// Secrets and hashes are not in any schema.
	require.NotContains(t, string(doc.Comps.Schemas["StoreToken"]), `"hash"`)
}
