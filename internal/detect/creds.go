package detect

import (
	"io"

	"github.com/garrisonhq/garrison/internal/creds"
)

// Credentials is a set of well-known factory username/password pairs.
type Credentials = creds.List

// ParseCredentials reads a list in the format of the built-in one (see
// creds.Parse).
func ParseCredentials(r io.Reader) (*Credentials, error) { return creds.Parse(r) }

// FactoryCredentials returns the built-in list.
func FactoryCredentials() *Credentials { return creds.Factory() }
