package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
)

// decodeBody reads exactly one JSON value of type T from r's body: at most
// limit bytes, no unknown fields, nothing after the value.
func decodeBody[T any](r *http.Request, w http.ResponseWriter, limit int64, v *T) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return errorf(http.StatusUnsupportedMediaType, CodeUnsupportedMedia, "body must be application/json")
		}
	} else {
		return errorf(http.StatusUnsupportedMediaType, CodeUnsupportedMedia, "body must be application/json (set Content-Type)")
	}
	body := http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return bodyError(err, limit)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return bodyError(err, limit)
			}
		}
		return errorf(http.StatusBadRequest, CodeBadRequest, "body must hold exactly one JSON value")
	}
	return nil
}

func bodyError(err error, limit int64) error {
	var mbe *http.MaxBytesError
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &mbe):
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: CodeTooLarge, Message: fmt.Sprintf("body larger than %d bytes", limit), Err: err}
	case errors.Is(err, io.EOF):
		return errorf(http.StatusBadRequest, CodeBadRequest, "empty body")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errorf(http.StatusBadRequest, CodeBadRequest, "truncated JSON")
	case errors.As(err, &se):
		return errorf(http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("malformed JSON at byte %d", se.Offset))
	case errors.As(err, &te):
		return errorf(http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("field %q must be %s", te.Field, te.Type))
	default:
		// json reports unknown fields as `json: unknown field "x"`.
		return &Error{Status: http.StatusBadRequest, Code: CodeBadRequest, Message: trimJSON(err.Error()), Err: err}
	}
}

func trimJSON(s string) string {
	const p = "json: "
	if len(s) > len(p) && s[:len(p)] == p {
		s = s[len(p):]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
