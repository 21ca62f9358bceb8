package main

import (
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/internal/cli"
)

// apiFlags are the flags of every command that talks to the API.
type apiFlags struct {
	url, dataDir, caFile, output string
	insecure                     bool
}

func (f *apiFlags) bind(cmd *cobra.Command) {
	p := cmd.PersistentFlags()
	p.StringVar(&f.url, "url", "", "API URL (default $GARRISON_URL, else the address in <data-dir>/run/api.addr, else https://localhost:8443)")
	p.StringVar(&f.dataDir, "data-dir", "", "trust the server certificate of this data directory (and find its address)")
	p.StringVar(&f.caFile, "ca-file", "", "PEM file of the certificate to trust (default $GARRISON_CA_FILE)")
	p.BoolVar(&f.insecure, "insecure", false, "skip TLS verification (development only)")
	p.StringVarP(&f.output, "output", "o", "table", "output format: table or json")
}

// client builds the API client; the token only ever comes from
// GARRISON_TOKEN.
func (f *apiFlags) client(e *cliEnv) (*cli.Client, error) {
	c := cli.Config{URL: f.url, Token: e.getenv("GARRISON_TOKEN"), CAFile: f.caFile, DataDir: f.dataDir, Insecure: f.insecure}
	if c.URL == "" {
		c.URL = e.getenv("GARRISON_URL")
	}
	if c.CAFile == "" {
		c.CAFile = e.getenv("GARRISON_CA_FILE")
	}
	return cli.New(c)
}

// scopePath is the API prefix of a tenant, or of the platform when tenant
// is empty.
func scopePath(tenant string) string {
	if tenant == "" {
		return "/api/v1/platform"
	}
	return "/api/v1/tenants/" + tenant
}

// readDoc reads a document named on the command line, "-" meaning standard
// input, reading at most limit+1 bytes so that the server, which enforces
// limit, sees an oversized document as such without the CLI holding more.
func readDoc(name string, limit int64) ([]byte, error) {
	var r io.Reader = os.Stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	return io.ReadAll(io.LimitReader(r, limit+1))
}
