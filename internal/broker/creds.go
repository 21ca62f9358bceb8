package broker

import (
	"bufio"
	_ "embed"
	"strings"
)

// factoryCredentials is the list of well-known factory usernames and
// passwords (the Mirai list and its kin), one "user password" pair a line.
//
//go:embed factory_credentials.txt
var factoryCredentials string

// FactoryCredentials is a set of well-known (username, password) pairs.
type FactoryCredentials struct {
	pairs map[[2]string]struct{}
	users map[string]struct{}
}

// LoadFactoryCredentials parses the built-in list. Lines are "user pass"
// (pass may be empty), # starts a comment.
func LoadFactoryCredentials() *FactoryCredentials {
	return ParseFactoryCredentials(factoryCredentials)
}

// ParseFactoryCredentials parses a list in the format of the built-in one.
// Malformed lines are skipped.
func ParseFactoryCredentials(text string) *FactoryCredentials {
	f := &FactoryCredentials{pairs: map[[2]string]struct{}{}, users: map[string]struct{}{}}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, pass, _ := strings.Cut(line, " ")
		f.pairs[[2]string{user, strings.TrimSpace(pass)}] = struct{}{}
		f.users[user] = struct{}{}
	}
	return f
}

// Match reports whether (user, pass) is a well-known factory pair.
func (f *FactoryCredentials) Match(user, pass string) bool {
	_, ok := f.pairs[[2]string{user, pass}]
	return ok
}

// Len returns the number of pairs.
func (f *FactoryCredentials) Len() int { return len(f.pairs) }
