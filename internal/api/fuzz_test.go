package api_test

import (
	"encoding/json"
	"testing"

	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

// FuzzCreateBodies throws arbitrary bodies at the routes that decode one:
// every answer is a success or a clean 4xx error, and a refusal changes
// nothing.
func FuzzCreateBodies(f *testing.F) {
	f.Add(uint8(0), []byte(`{"id":"acme","name":"Acme"}`))
	f.Add(uint8(1), []byte(`{"name":"ops","role":"viewer"}`))
	f.Add(uint8(2), []byte(`{"name":"ci","role":"admin","ttl":"1h"}`))
	f.Add(uint8(2), []byte(`{"name":"ci","operator":"op-x","ttl":"-1h"}`))
	f.Add(uint8(0), []byte(`{"id":"a"} {}`))
	f.Add(uint8(3), []byte(`{"name":"north","kind":"dynamic","selector":"model=m1,tag=site:north"}`))
	f.Add(uint8(3), []byte(`{"name":"loop","kind":"dynamic","selector":"group=loop"}`))
	e := newEnv(f)
	w := e.world(f)
	paths := []string{"/api/v1/tenants", "/api/v1/tenants/" + string(w.tenant) + "/operators", "/api/v1/tenants/" + string(w.tenant) + "/tokens",
		"/api/v1/tenants/" + string(w.tenant) + "/groups"}
	chains := []string{string(api.PlatformChain), string(w.tenant), string(w.tenant), string(w.tenant)}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		i := int(which) % len(paths)
		before := e.head(t, eventTenant(chains[i]))
		rec := e.do("POST", paths[i], w.tokens[store.RolePlatformAdmin], string(body), "Content-Type", "application/json")
		switch {
		case rec.Code == 201:
			if e.head(t, eventTenant(chains[i])) <= before {
				t.Fatal("created without an audit record")
			}
		case rec.Code >= 400 && rec.Code < 500:
			var eb api.ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error.Code == "" {
				t.Fatalf("error body %q", rec.Body.String())
			}
			if e.head(t, eventTenant(chains[i])) != before {
				t.Fatal("refused request changed state")
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
		}
	})
}

func eventTenant(s string) event.TenantID { return event.TenantID(s) }

// FuzzSyslogBodies throws arbitrary bodies at PUT .../syslog: every answer
// is a stored target (audited) or a clean 4xx error that changes nothing.
func FuzzSyslogBodies(f *testing.F) {
	f.Add([]byte(`{"addr":"siem.example:6514","tls":true}`))
	f.Add([]byte(`{"addr":"siem.example:6514","ca_pem":"x"}`))
	f.Add([]byte(`{"addr":"[::1]:514"}`))
	f.Add([]byte(`{"addr":":514"}`))
	e := newEnv(f)
	w := e.world(f)
	path := "/api/v1/tenants/" + string(w.tenant) + "/syslog"
	f.Fuzz(func(t *testing.T, body []byte) {
		before := e.head(t, w.tenant)
		rec := e.do("PUT", path, w.tokens[store.RoleAdmin], string(body), "Content-Type", "application/json")
		switch {
		case rec.Code == 200:
			if e.head(t, w.tenant) <= before {
				t.Fatal("set without an audit record")
			}
		case rec.Code >= 400 && rec.Code < 500:
			var eb api.ErrorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || eb.Error.Code == "" {
				t.Fatalf("error body %q", rec.Body.String())
			}
			if e.head(t, w.tenant) != before {
				t.Fatal("refused request changed state")
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
		}
	})
}
