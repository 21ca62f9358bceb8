package detect

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

// Credentials is a set of well-known factory username/password pairs.
type Credentials struct {
	pairs map[string]struct{} // user \x00 pass
	users map[string]struct{}
}

// ParseCredentials reads "username password" per line (whitespace
// separated, password may be empty, # comments). Lines longer than 1 KiB or
// with more than two fields are skipped.
func ParseCredentials(r io.Reader) (*Credentials, error) {
	c := &Credentials{pairs: map[string]struct{}{}, users: map[string]struct{}{}}
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
		return nil, fmt.Errorf("detect: credentials list: %w", err)
	}
	return c, nil
}

// FactoryCredentials returns the built-in list (the Mirai scanner's pairs
// plus common kin).
func FactoryCredentials() *Credentials {
	c, _ := ParseCredentials(strings.NewReader(factoryCredentialsData))
	return c
}

// Pair reports whether user/pass is on the list.
func (c *Credentials) Pair(user, pass string) bool {
	_, ok := c.pairs[user+"\x00"+pass]
	return ok
}

// User reports whether user is a factory username.
func (c *Credentials) User(user string) bool {
	_, ok := c.users[user]
	return ok
}

// Len returns the number of pairs.
func (c *Credentials) Len() int { return len(c.pairs) }
