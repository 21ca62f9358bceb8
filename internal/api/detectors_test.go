package api_test

import (
	"context"
	"encoding/json"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/detect"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/store"
)

type discardAlerts struct{}

func (discardAlerts) Raise(context.Context, alert.Alert) error { return nil }

func TestDetectorSettings(t *testing.T) {
	e := newEnv(t)
	eng := detect.New(detect.Options{Sink: discardAlerts{}})
	srv, err := api.New(api.Options{Store: e.st, Clock: e.clk, Detectors: eng})
	require.NoError(t, err)
	e.srv = srv
	w := e.world(t)
	admin, viewer, operator := w.tokens[store.RoleAdmin], w.tokens[store.RoleViewer], w.tokens[store.RoleOperator]
	base := "/api/v1/tenants/" + string(w.tenant) + "/detectors"

	// The platform-wide list: every detector with kind, fields and defaults.
	rec := e.do("GET", "/api/v1/detectors", viewer, "")
	require.Equal(t, 200, rec.Code, rec.Body.String())
	var all []api.DetectorInfo
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &all))
	require.Len(t, all, len(detect.Detectors()))
	var bf api.DetectorInfo
	for _, d := range all {
		if d.Name == "auth.bruteforce" {
			bf = d
		}
	}
	require.Equal(t, []string{"auth.bruteforce"}, bf.AlertKinds)
	require.Contains(t, bf.Fields, detect.Field{Name: "threshold", Type: "integer"})
	var def map[string]any
	require.NoError(t, json.Unmarshal(bf.Defaults, &def))
	require.Equal(t, "10m0s", def["window"])
	require.EqualValues(t, 8, def["threshold"])

	head := e.head(t, w.tenant)
	// A misspelt field: 400 naming it, nothing stored, nothing audited.
	rec = e.do("PUT", base+"/auth.bruteforce/settings", admin, `{"threshld": 5}`)
	requireCode(t, rec, 400, api.CodeInvalid)
	require.Contains(t, rec.Body.String(), `threshld`)
	rec = e.do("PUT", base+"/auth.bruteforce/settings", admin, `{"threshold": -5}`)
	requireCode(t, rec, 400, api.CodeInvalid)
	require.Contains(t, rec.Body.String(), `threshold`)
	require.Equal(t, head, e.head(t, w.tenant))
	require.Equal(t, 8, eng.SettingsFor(w.tenant, "", "auth.bruteforce").(*detect.BruteforceSettings).Threshold)
	// Unknown detector: 404. Operators and viewers may not write.
	requireCode(t, e.do("PUT", base+"/no.such/settings", admin, `{}`), 404, api.CodeNotFound)
	requireCode(t, e.do("PUT", base+"/auth.bruteforce/settings", operator, `{"threshold":5}`), 403, api.CodeForbidden)
	requireCode(t, e.do("PUT", base+"/auth.bruteforce/settings", viewer, `{"threshold":5}`), 403, api.CodeForbidden)

	// The tenant's override, then a group's: stored, audited, live.
	rec = e.do("PUT", base+"/auth.bruteforce/settings", admin, `{"threshold": 50, "window": "5m"}`)
	require.Equal(t, 200, rec.Code, rec.Body.String())
	var got api.DetectorInfo
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
	require.JSONEq(t, `{"threshold": 50, "window": "5m"}`, string(got.Override))
	require.EqualValues(t, 50, jsonField(t, got.Effective, "threshold"))
	require.Equal(t, head+1, e.head(t, w.tenant))
	live := eng.SettingsFor(w.tenant, "meters", "auth.bruteforce").(*detect.BruteforceSettings)
	require.Equal(t, 50, live.Threshold)

	grp := "?group=" + url.QueryEscape("meters")
	rec = e.do("PUT", base+"/auth.bruteforce/settings"+grp, admin, `{"disabled": true}`)
	require.Equal(t, 200, rec.Code, rec.Body.String())
	rec = e.do("GET", base+grp, viewer, "")
	require.Equal(t, 200, rec.Code, rec.Body.String())
	var list []api.DetectorInfo
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &list))
	for _, d := range list {
		if d.Name == "auth.bruteforce" {
			require.True(t, d.Disabled)
			require.Equal(t, "meters", d.Group)
			require.EqualValues(t, 50, jsonField(t, d.Effective, "threshold"), "the tenant scope applies to its groups")
		} else {
			require.False(t, d.Disabled, d.Name)
		}
	}
	// The stored document is what a restart loads.
	var stored detect.TenantSettings
	require.NoError(t, e.st.View(context.Background(), func(tx store.Tx) error {
		b, err := tx.Settings().Get(context.Background(), w.tenant, detect.SettingsKey)
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &stored)
	}))
	require.JSONEq(t, `{"disabled": true}`, string(stored.Groups["meters"]["auth.bruteforce"]))
	var s detect.Settings
	stored.Apply(w.tenant, &s)
	require.Equal(t, eng.Settings(), s)

	// {} removes the group override; the audit record says from what.
	rec = e.do("PUT", base+"/auth.bruteforce/settings"+grp, admin, `{}`)
	require.Equal(t, 200, rec.Code, rec.Body.String())
	rec = e.do("GET", base+"/auth.bruteforce/settings"+grp, viewer, "")
	got = api.DetectorInfo{}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &got))
	require.False(t, got.Disabled)
	require.Empty(t, got.Override)
	var recs []store.AuditRecord
	require.NoError(t, e.st.View(context.Background(), func(tx store.Tx) error {
		var err error
		recs, err = tx.Audit().Range(context.Background(), w.tenant, head, 10)
		return err
	}))
	require.Len(t, recs, 3)
	require.Equal(t, "detector.settings.set", recs[2].Action)
	require.Equal(t, "detector:auth.bruteforce/group:meters", recs[2].Target)
	require.Equal(t, map[string]any{"disabled": true}, jsonField(t, recs[2].Details, "from"))

	// Another tenant's admin sees nothing of it.
	requireCode(t, e.do("GET", base+"/auth.bruteforce/settings", w.foreign, ""), 404, api.CodeNotFound)
	require.Equal(t, 8, eng.SettingsFor(event.TenantID("other"), "", "auth.bruteforce").(*detect.BruteforceSettings).Threshold)
}

func jsonField(t *testing.T, raw []byte, name string) any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(raw, &m), string(raw))
	return m[name]
}
