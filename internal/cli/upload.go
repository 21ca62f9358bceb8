package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"
)

// uploadTimeout bounds one upload (a large manifest is read, validated
// and committed before the server answers).
const uploadTimeout = 15 * time.Minute

// Send streams body with the given content type and returns the status
// and the response body, whatever the status: the caller reads refusals
// that carry more than a code and a message (a manifest's bad rows).
func (c *Client) Send(ctx context.Context, method, path, contentType string, body io.Reader) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Content-Type", contentType)
	hc := *c.http
	hc.Timeout = uploadTimeout
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, data, nil
}
