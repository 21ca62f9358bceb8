package api

import (
	"encoding/json"
	"net/http"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/store"
)

// OpenAPI returns the OpenAPI 3.1 document of the route table. It is built
// from the table alone (paths, permissions, request and response types by
// reflection), so it cannot drift from the routes that exist.
func (s *Server) OpenAPI() map[string]any {
	paths := map[string]map[string]any{}
	schemas := map[string]any{
		"Error": schemaOf(reflect.TypeFor[ErrorBody](), nil),
	}
	for _, rt := range s.routes {
		item := paths[rt.Pattern]
		if item == nil {
			item = map[string]any{}
			paths[rt.Pattern] = item
		}
		opn := map[string]any{
			"operationId": operationID(rt),
			"summary":     rt.Summary,
		}
		if rt.Perm == "" {
			opn["security"] = []any{}
		} else {
			opn["x-garrison-permission"] = string(rt.Perm)
		}
		var params []any
		for _, name := range pathParams.FindAllStringSubmatch(rt.Pattern, -1) {
			params = append(params, map[string]any{"name": name[1], "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
		}
		for _, q := range rt.Query {
			params = append(params, map[string]any{"name": q, "in": "query", "required": false, "schema": map[string]any{"type": "string"}})
		}
		if params != nil {
			opn["parameters"] = params
		}
		if rt.Body != "" {
			opn["requestBody"] = map[string]any{"required": true, "content": map[string]any{
				rt.Body: map[string]any{"schema": map[string]any{"type": "string"}},
			}}
		}
		if rt.Req != nil {
			opn["requestBody"] = map[string]any{"required": true, "content": map[string]any{
				"application/json": map[string]any{"schema": schemaOf(rt.Req, schemas)},
			}}
		}
		ok := map[string]any{"description": http.StatusText(rt.Status)}
		switch {
		case rt.Raw:
			ok["content"] = map[string]any{rt.ContentType: map[string]any{"schema": map[string]any{"type": "string"}}}
		case rt.Resp != nil:
			ok["content"] = map[string]any{"application/json": map[string]any{"schema": schemaOf(rt.Resp, schemas)}}
		}
		errRef := map[string]any{"content": map[string]any{"application/json": map[string]any{"schema": map[string]any{"$ref": "#/components/schemas/Error"}}}}
		resps := map[string]any{itoa(rt.Status): ok, "default": merge(errRef, "description", "error")}
		opn["responses"] = resps
		item[strings.ToLower(rt.Method)] = opn
	}
	return map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{
			"title":       "Garrison API",
			"version":     "1",
			"description": "Tenant-scoped REST API. Authenticate with `Authorization: Bearer gar_...`. A resource of another tenant answers 404.",
		},
		"paths": paths,
		"components": map[string]any{
			"schemas":         schemas,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer"}},
		},
		"security": []any{map[string]any{"bearer": []any{}}},
	}
}

var pathParams = regexp.MustCompile(`\{([a-z_]+)\}`)

func operationID(rt Route) string {
	var b strings.Builder
	b.WriteString(strings.ToLower(rt.Method))
	for _, seg := range strings.Split(rt.Pattern, "/") {
		seg = strings.Trim(seg, "{}")
		if seg == "" || seg == "api" || seg == "v1" {
			continue
		}
		seg = strings.NewReplacer(".", "_", "-", "_").Replace(seg)
		b.WriteString("_" + seg)
	}
	return b.String()
}

func itoa(n int) string { return strconv.Itoa(n) }

func merge(m map[string]any, k string, v any) map[string]any {
	out := map[string]any{k: v}
	for kk, vv := range m {
		out[kk] = vv
	}
	return out
}

// schemaOf returns the JSON schema of t. Named structs go to schemas (when
// not nil) and are referenced.
func schemaOf(t reflect.Type, schemas map[string]any) map[string]any {
	switch t {
	case reflect.TypeFor[time.Time]():
		return map[string]any{"type": "string", "format": "date-time"}
	case reflect.TypeFor[json.RawMessage]():
		return map[string]any{} // any JSON value
	case reflect.TypeFor[[]byte]():
		return map[string]any{"type": "string", "contentEncoding": "base64"}
	case reflect.TypeFor[store.Role]():
		var rs []string
		for _, r := range auth.Roles() {
			rs = append(rs, string(r))
		}
		return map[string]any{"type": "string", "enum": rs}
	}
	switch t.Kind() {
	case reflect.Pointer:
		s := schemaOf(t.Elem(), schemas)
		return map[string]any{"anyOf": []any{s, map[string]any{"type": "null"}}}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice, reflect.Array:
		return map[string]any{"type": "array", "items": schemaOf(t.Elem(), schemas)}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaOf(t.Elem(), schemas)}
	case reflect.Struct:
		props := map[string]any{}
		var required []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			props[name] = schemaOf(f.Type, schemas)
			if !strings.Contains(opts, "omitempty") && f.Type.Kind() != reflect.Pointer {
				required = append(required, name)
			}
		}
		sort.Strings(required)
		obj := map[string]any{"type": "object", "properties": props, "additionalProperties": false}
		if len(required) > 0 {
			obj["required"] = required
		}
		if schemas == nil || t.Name() == "" {
			return obj
		}
		name := schemaName(t)
		if _, ok := schemas[name]; !ok {
			schemas[name] = obj
		}
		return map[string]any{"$ref": "#/components/schemas/" + name}
	default:
		return map[string]any{}
	}
}

func schemaName(t reflect.Type) string {
	pkg := t.PkgPath()
	if i := strings.LastIndex(pkg, "/"); i >= 0 {
		pkg = pkg[i+1:]
	}
	if pkg == "api" {
		return t.Name()
	}
	return strings.ToUpper(pkg[:1]) + pkg[1:] + t.Name()
}
