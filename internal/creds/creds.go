// Package creds holds the built-in list of well-known factory credentials
// (the Mirai scanner's pairs and their kin), shipped as data: the broker
// refuses them at CONNECT and detection recognises them in failed logins.
package creds

import (
	"bufio"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"strings"
)

//go:embed factory_credentials.txt
var factoryCredentialsData string

// List is a set of well-known factory username/password pairs.
type List struct {
	pairs map[string]struct{} // user \x00 pass
	users map[string]struct{}
}

// Parse reads "username password" per line (whitespace
// separated, password may be empty, # comments). Lines longer than 1 KiB or
// with more than two fields are skipped.
func Parse(r io.Reader) (*List, error) {
	c := &List{pairs: map[string]struct{}{}, users: map[string]struct{}{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 4096)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || len(line) > 1024 {
			continue
		}
		f := strings.Fields(line)
		if len(f) > 2 {
			continue
		}
		pass := ""
		if len(f) == 2 {
			pass = f[1]
		}
		c.pairs[f[0]+"\x00"+pass] = struct{}{}
		c.users[f[0]] = struct{}{}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, bufio.ErrTooLong) {
		return nil, fmt.Errorf("creds: credentials list: %w", err)
	}
	return c, nil
}

// Factory returns the built-in list (the Mirai scanner's pairs
// plus common kin).
func Factory() *List {
	c, _ := Parse(strings.NewReader(factoryCredentialsData))
	return c
}

// Pair reports whether user/pass is on the list.
func (c *List) Pair(user, pass string) bool {
	_, ok := c.pairs[user+"\x00"+pass]
	return ok
}

// User reports whether user is a factory username.
func (c *List) User(user string) bool {
	_, ok := c.users[user]
	return ok
}

// Len returns the number of pairs.
func (c *List) Len() int { return len(c.pairs) }
