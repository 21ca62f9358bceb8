package api

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/garrisonhq/garrison/internal/auth"
	"github.com/garrisonhq/garrison/internal/store"
)

// Error codes are part of the API contract: clients branch on them, so they
// never change meaning.
const (
	CodeBadRequest       = "bad_request"       // malformed body or parameters
	CodeInvalid          = "invalid"           // well-formed input that breaks a rule
	CodeUnauthenticated  = "unauthenticated"   // missing, malformed, unknown, expired or revoked token
	CodeForbidden        = "forbidden"         // the role lacks the permission
	CodeNotFound         = "not_found"         // absent, or in a tenant the caller cannot see
	CodeConflict         = "conflict"          // already exists, or state forbids it
	CodeTooLarge         = "too_large"         // body over the limit
	CodeUnsupportedMedia = "unsupported_media" // body that is not application/json
	CodeUnavailable      = "unavailable"       // a dependency is down
	CodeInternal         = "internal"          // our fault; details are only in the log
)

// Error is an error with a public code and message. The wrapped Err is the
// internal cause: it is logged, never sent.
type Error struct {
	Status  int
	Code    string
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Code + ": " + e.Message + ": " + e.Err.Error()
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

func errorf(status int, code, msg string) *Error {
	return &Error{Status: status, Code: code, Message: msg}
}

var errNotFound = errorf(http.StatusNotFound, CodeNotFound, "not found")

// ErrorBody is the JSON shape of every error response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the payload of [ErrorBody].
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// toError maps any error to its public form. Store errors keep a generic
// message so that internal wording (table names, ids of other tenants) does
// not leak.
func toError(err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, auth.ErrMalformed), errors.Is(err, auth.ErrUnknown),
		errors.Is(err, auth.ErrExpired), errors.Is(err, auth.ErrRevoked):
		return &Error{Status: http.StatusUnauthorized, Code: CodeUnauthenticated, Message: "missing or invalid token", Err: err}
	case errors.Is(err, store.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: CodeNotFound, Message: "not found", Err: err}
	case errors.Is(err, store.ErrConflict):
		return &Error{Status: http.StatusConflict, Code: CodeConflict, Message: "already exists or conflicts with current state", Err: err}
	case errors.Is(err, store.ErrInvalid):
		return &Error{Status: http.StatusBadRequest, Code: CodeInvalid, Message: "invalid input", Err: err}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusServiceUnavailable, Code: CodeUnavailable, Message: "request cancelled or timed out", Err: err}
	default:
		return &Error{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error", Err: err}
	}
}

// renderError writes err as an [ErrorBody] and logs 5xx causes.
func renderError(log *slog.Logger, w http.ResponseWriter, r *http.Request, err error) {
	e := toError(err)
	if e.Status >= 500 {
		log.ErrorContext(r.Context(), "api request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else if e.Err != nil {
		log.DebugContext(r.Context(), "api request refused", "method", r.Method, "path", r.URL.Path, "code", e.Code, "err", e.Err)
	}
	if e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="garrison"`)
	}
	writeJSON(w, e.Status, ErrorBody{Error: ErrorDetail{Code: e.Code, Message: e.Message}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away; nothing to do
}
