package cli

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

type row struct{ A, B string }

var cols = []Column[row]{{"A", func(r row) string { return r.A }}, {"B", func(r row) string { return r.B }}}

func TestPrint(t *testing.T) {
	var b bytes.Buffer
	require.NoError(t, Print(&b, "table", []row{{"x", "evil\x1b[2J"}, {"long-value", "y"}}, cols))
	require.Equal(t, "A           B\nx           evil?[2J\nlong-value  y\n", b.String())
	b.Reset()
	require.NoError(t, Print[row](&b, "json", nil, cols))
	require.Equal(t, "[]\n", b.String())
	require.Error(t, Print(&b, "xml", []row{}, cols))
}

func TestClientErrors(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer gar_t" {
			w.WriteHeader(401)
			return
		}
		w.WriteHeader(404)
		w.Write([]byte(`{"error":{"code":"not_found","message":"not found"}}`))
	}))
	defer srv.Close()
	_, err := New(Config{URL: srv.URL})
	require.ErrorIs(t, err, ErrNoToken)

	c, err := New(Config{URL: srv.URL, Token: "gar_t"})
	require.NoError(t, err)
	err = c.Do(context.Background(), "GET", "/x", nil, nil)
	require.Error(t, err, "an unknown self-signed server is not trusted by default")

	c, err = New(Config{URL: srv.URL, Token: "gar_t", Insecure: true})
	require.NoError(t, err)
	err = c.Do(context.Background(), "GET", "/x", nil, nil)
	var ae *APIError
	require.True(t, errors.As(err, &ae))
	require.Equal(t, "not_found", ae.Code)
	require.Equal(t, 404, ae.Status)
}
