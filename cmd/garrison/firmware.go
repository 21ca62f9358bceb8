package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/garrisonhq/garrison/firmware"
	"github.com/garrisonhq/garrison/internal/api"
	"github.com/garrisonhq/garrison/internal/cli"
	"github.com/garrisonhq/garrison/internal/event"
	"github.com/garrisonhq/garrison/internal/ota"
	"github.com/garrisonhq/garrison/internal/store"
)

var releaseCols = []cli.Column[api.ReleaseInfo]{
	{Header: "VERSION", Value: func(r api.ReleaseInfo) string { return r.Version }},
	{Header: "MODELS", Value: func(r api.ReleaseInfo) string { return strings.Join(r.Models, ",") }},
	{Header: "SHA256", Value: func(r api.ReleaseInfo) string { return r.SHA256 }},
	{Header: "SIZE", Value: func(r api.ReleaseInfo) string { return strconv.FormatInt(r.Size, 10) }},
	{Header: "EXPIRES", Value: func(r api.ReleaseInfo) string { return cli.Time(r.Expires) }},
	{Header: "ADDED", Value: func(r api.ReleaseInfo) string { return cli.Time(r.AddedAt) }},
}

// newFirmwareCmd is `garrison firmware`: keygen, sign, sign-keys and
// verify work offline with the tenant's keys; the others talk to the API.
func newFirmwareCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant string
	cmd := &cobra.Command{Use: "firmware", Short: "Release keys, signed manifests (offline) and the tenant's firmware catalog (API)"}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (API commands)")
	viaAPI := tenantRun(e, &f, &tenant, "/firmware")

	var dir, role, name string
	keygen := &cobra.Command{
		Use: "keygen", Short: "Create an Ed25519 key pair (offline): NAME.key (0600) and NAME.pub", Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			kp, err := firmware.Keygen(dir, firmware.Role(role), name, nil)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(e.Stdout, "keyid %s\nprivate %s\npublic %s\n", kp.KeyID, kp.PrivateKey, kp.PublicKey)
			return err
		},
	}
	keygen.Flags().StringVar(&dir, "dir", ".", "directory to write the key files to")
	keygen.Flags().StringVar(&role, "role", "release", "root (signs keys documents) or release (signs manifests)")
	keygen.Flags().StringVar(&name, "name", "", "file name without extension (default the role)")

	var keyFile, artifact, version, minVersion, models, notes, out, addTo string
	var expires time.Duration
	sign := &cobra.Command{
		Use:   "sign",
		Short: "Write a signed manifest for an artifact (offline); --add-to adds a signature to an existing manifest (threshold)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			key, err := firmware.LoadPrivateKey(keyFile)
			if err != nil {
				return err
			}
			var m *firmware.Manifest
			if addTo != "" {
				b, err := os.ReadFile(addTo)
				if err != nil {
					return err
				}
				if m, err = firmware.ParseManifest(b); err != nil {
					return err
				}
			} else {
				if artifact == "" || version == "" || models == "" {
					return errors.New("--artifact, --version and --models are required")
				}
				fh, err := os.Open(artifact)
				if err != nil {
					return err
				}
				h := sha256.New()
				n, err := io.Copy(h, fh)
				fh.Close()
				if err != nil {
					return err
				}
				if minVersion == "" {
					minVersion = "0.0.0"
				}
				m = &firmware.Manifest{Signed: firmware.Release{Expires: time.Now().UTC().Add(expires).Truncate(time.Second),
					MinVersion: minVersion, Models: strings.Split(models, ","), Notes: notes,
					SHA256: hex.EncodeToString(h.Sum(nil)), Size: n, Version: version}}
			}
			if err := m.Sign(key); err != nil {
				return err
			}
			b, err := m.Marshal()
			if err != nil {
				return err
			}
			return writeOut(e, out, b)
		},
	}
	sign.Flags().StringVar(&keyFile, "key", "", "release private key (PEM)")
	sign.Flags().StringVar(&artifact, "artifact", "", "the firmware image")
	sign.Flags().StringVar(&version, "version", "", "semantic version of the release")
	sign.Flags().StringVar(&minVersion, "min-version", "", "lowest version this release may replace (default 0.0.0)")
	sign.Flags().StringVar(&models, "models", "", "comma-separated device models it targets")
	sign.Flags().StringVar(&notes, "notes", "", "release notes")
	sign.Flags().DurationVar(&expires, "expires", 90*24*time.Hour, "how long the manifest stays valid")
	sign.Flags().StringVar(&out, "out", "", "write the manifest here (default stdout)")
	sign.Flags().StringVar(&addTo, "add-to", "", "add a signature to this existing manifest instead")

	var rootKey, pubs string
	var keysVersion uint64
	var threshold int
	var keyExpires time.Duration
	signKeys := &cobra.Command{
		Use:   "sign-keys",
		Short: "Write a keys document trusting release public keys, signed by the root key (offline); raise --version on every change",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			root, err := firmware.LoadPrivateKey(rootKey)
			if err != nil {
				return err
			}
			exp := time.Now().UTC().Add(keyExpires).Truncate(time.Second)
			set := firmware.KeySet{Expires: exp, Threshold: threshold, Version: keysVersion}
			for _, p := range strings.Split(pubs, ",") {
				if p == "" {
					continue
				}
				pub, err := firmware.LoadPublicKey(p)
				if err != nil {
					return err
				}
				set.Keys = append(set.Keys, firmware.NewTrustedKey(pub, exp))
			}
			b, err := firmware.SignKeys(set, root)
			if err != nil {
				return err
			}
			return writeOut(e, out, b)
		},
	}
	signKeys.Flags().StringVar(&rootKey, "root", "", "root private key (PEM)")
	signKeys.Flags().StringVar(&pubs, "keys", "", "comma-separated release public key files to trust (none: revoke all)")
	signKeys.Flags().Uint64Var(&keysVersion, "version", 1, "document version; must increase with every change")
	signKeys.Flags().IntVar(&threshold, "threshold", 1, "valid signatures a manifest needs")
	signKeys.Flags().DurationVar(&keyExpires, "expires", 365*24*time.Hour, "how long the document and its keys stay valid")
	signKeys.Flags().StringVar(&out, "out", "", "write the document here (default stdout)")

	var manifestFile, keysFile, rootPub, model, current string
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Verify a manifest as a device does (offline): keys document against the root, signatures, expiry, and optionally artifact, model and anti-rollback",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			mb, err := os.ReadFile(manifestFile)
			if err != nil {
				return err
			}
			kb, err := os.ReadFile(keysFile)
			if err != nil {
				return err
			}
			root, err := firmware.LoadPublicKey(rootPub)
			if err != nil {
				return err
			}
			now := time.Now()
			m, _, err := firmware.Verify(mb, kb, root, 0, now)
			if err != nil {
				return err
			}
			if model != "" || current != "" {
				if err := firmware.VerifyForDevice(m, model, current, now); err != nil {
					return err
				}
			}
			if artifact != "" {
				fh, err := os.Open(artifact)
				if err != nil {
					return err
				}
				defer fh.Close()
				h := sha256.New()
				n, err := io.Copy(h, fh)
				if err != nil {
					return err
				}
				if n != m.Signed.Size {
					return fmt.Errorf("%w: artifact has %d bytes, manifest says %d", firmware.ErrSize, n, m.Signed.Size)
				}
				if got := hex.EncodeToString(h.Sum(nil)); got != m.Signed.SHA256 {
					return fmt.Errorf("%w: artifact sha256 %s, manifest says %s", firmware.ErrDigest, got, m.Signed.SHA256)
				}
			}
			_, err = fmt.Fprintf(e.Stdout, "ok: %s for %s, sha256 %s, %d bytes\n", m.Signed.Version, strings.Join(m.Signed.Models, ","), m.Signed.SHA256, m.Signed.Size)
			return err
		},
	}
	verify.Flags().StringVar(&manifestFile, "manifest", "", "signed manifest")
	verify.Flags().StringVar(&keysFile, "keys", "", "keys document")
	verify.Flags().StringVar(&rootPub, "root", "", "root public key (PEM)")
	verify.Flags().StringVar(&artifact, "artifact", "", "also check this artifact's size and SHA-256")
	verify.Flags().StringVar(&model, "model", "", "also check the release targets this model")
	verify.Flags().StringVar(&current, "current", "", "also check anti-rollback against this running version")

	trustRoot := &cobra.Command{
		Use: "trust-root PUBLIC_KEY_FILE", Short: "Set the tenant's OTA root public key", Args: cobra.ExactArgs(1),
		RunE: viaAPI(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			var res api.KeyIDResponse
			if err := cl.Do(c.Context(), http.MethodPost, base+"/root", api.SetRootRequest{PublicKey: string(b)}, &res); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, res, []cli.Column[api.KeyIDResponse]{{Header: "ROOT KEYID", Value: func(r api.KeyIDResponse) string { return r.KeyID }}})
		}),
	}
	setKeys := &cobra.Command{
		Use: "set-keys KEYS_FILE", Short: "Upload the keys document (trusted release keys), signed by the root key", Args: cobra.ExactArgs(1),
		RunE: viaAPI(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			code, body, err := cl.Send(c.Context(), http.MethodPost, base+"/keys", "application/json", bytes.NewReader(b))
			if err != nil {
				return err
			}
			if err := apiErr(code, body); err != nil {
				return err
			}
			var info api.KeysInfo
			if err := json.Unmarshal(body, &info); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, info, []cli.Column[api.KeysInfo]{
				{Header: "VERSION", Value: func(k api.KeysInfo) string { return strconv.FormatUint(k.Version, 10) }},
				{Header: "THRESHOLD", Value: func(k api.KeysInfo) string { return strconv.Itoa(k.Threshold) }},
				{Header: "KEYS", Value: func(k api.KeysInfo) string { return strconv.Itoa(len(k.KeyIDs)) }},
				{Header: "EXPIRES", Value: func(k api.KeysInfo) string { return cli.Time(k.Expires) }},
			})
		}),
	}
	var upManifest, upArtifact string
	upload := &cobra.Command{
		Use: "upload", Short: "Upload a signed release (manifest and artifact, streamed)", Args: cobra.NoArgs,
		RunE: viaAPI(func(c *cobra.Command, cl *cli.Client, base string, _ []string) error {
			mb, err := os.ReadFile(upManifest)
			if err != nil {
				return err
			}
			m, err := firmware.ParseManifest(mb)
			if err != nil {
				return err
			}
			line, err := m.Marshal() // one line, whatever the file's layout
			if err != nil {
				return err
			}
			fh, err := os.Open(upArtifact)
			if err != nil {
				return err
			}
			defer fh.Close()
			body := io.MultiReader(bytes.NewReader(line), strings.NewReader("\n"), fh)
			code, resp, err := cl.Send(c.Context(), http.MethodPost, base+"/releases", api.ReleaseContentType, body)
			if err != nil {
				return err
			}
			if err := apiErr(code, resp); err != nil {
				return err
			}
			var r api.ReleaseInfo
			if err := json.Unmarshal(resp, &r); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, r, releaseCols)
		}),
	}
	upload.Flags().StringVar(&upManifest, "manifest", "", "signed manifest (from firmware sign)")
	upload.Flags().StringVar(&upArtifact, "artifact", "", "the firmware image")
	list := &cobra.Command{
		Use: "list", Short: "List the tenant's releases", Args: cobra.NoArgs,
		RunE: viaAPI(func(c *cobra.Command, cl *cli.Client, base string, _ []string) error {
			var rs []api.ReleaseInfo
			if err := cl.Do(c.Context(), http.MethodGet, base+"/releases", nil, &rs); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, rs, releaseCols)
		}),
	}
	minVer := &cobra.Command{
		Use: "min-version MODEL VERSION", Short: "Set the lowest version a model may run or be given (\"\" clears it)", Args: cobra.ExactArgs(2),
		RunE: viaAPI(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			var r api.MinVersionRequest
			if err := cl.Do(c.Context(), http.MethodPost, base+"/min-version", api.MinVersionRequest{Model: args[0], Version: args[1]}, &r); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, r, []cli.Column[api.MinVersionRequest]{
				{Header: "MODEL", Value: func(m api.MinVersionRequest) string { return m.Model }},
				{Header: "MIN VERSION", Value: func(m api.MinVersionRequest) string { return m.Version }},
			})
		}),
	}
	cmd.AddCommand(keygen, sign, signKeys, verify, trustRoot, setKeys, upload, list, minVer)
	return cmd
}

// apiErr turns a non-2xx response of Send into an *cli.APIError.
func apiErr(code int, body []byte) error {
	if code/100 == 2 {
		return nil
	}
	var eb api.ErrorBody
	if json.Unmarshal(body, &eb) != nil || eb.Error.Code == "" {
		return &cli.APIError{Status: code, Code: "http", Message: strings.TrimSpace(string(body))}
	}
	return &cli.APIError{Status: code, Code: eb.Error.Code, Message: eb.Error.Message}
}

func writeOut(e *cliEnv, path string, b []byte) error {
	b = append(b, '\n')
	if path == "" {
		_, err := e.Stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

var campaignCols = []cli.Column[api.CampaignInfo]{
	{Header: "ID", Value: func(c api.CampaignInfo) string { return c.ID }},
	{Header: "NAME", Value: func(c api.CampaignInfo) string { return c.Spec.Name }},
	{Header: "VERSION", Value: func(c api.CampaignInfo) string { return c.Spec.Version }},
	{Header: "MODEL", Value: func(c api.CampaignInfo) string { return c.Spec.Selector.Model }},
	{Header: "TARGETS", Value: func(c api.CampaignInfo) string { return strconv.Itoa(c.Spec.Targets) }},
	{Header: "STATE", Value: func(c api.CampaignInfo) string { return string(c.State) }},
	{Header: "WAVE", Value: func(c api.CampaignInfo) string { return fmt.Sprintf("%d/%d", c.Wave, c.Waves) }},
	{Header: "REASON", Value: func(c api.CampaignInfo) string { return c.Reason }},
}

// newCampaignCmd is `garrison campaign`.
func newCampaignCmd(e *cliEnv) *cobra.Command {
	var f apiFlags
	var tenant string
	cmd := &cobra.Command{Use: "campaign", Short: "Create and steer firmware campaigns of a tenant"}
	f.bind(cmd)
	cmd.PersistentFlags().StringVar(&tenant, "tenant", "", "tenant id (required)")
	run := tenantRun(e, &f, &tenant, "/campaigns")
	var spec ota.Spec
	var waves, windows, devices string
	var minSuccess, maxFailure float64
	create := &cobra.Command{
		Use: "create", Short: "Roll a release out to a selector's devices in waves with gates", Args: cobra.NoArgs,
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, _ []string) error {
			for _, w := range strings.Split(waves, ",") {
				if w == "" {
					continue
				}
				p, err := strconv.ParseFloat(strings.TrimSuffix(w, "%"), 64)
				if err != nil {
					return fmt.Errorf("--waves: %q is not a percentage", w)
				}
				spec.Waves = append(spec.Waves, p)
			}
			for _, w := range strings.Split(windows, ",") {
				if w == "" {
					continue
				}
				a, b, ok := strings.Cut(w, "-")
				if !ok {
					return fmt.Errorf("--windows: %q is not HH:MM-HH:MM", w)
				}
				spec.Windows = append(spec.Windows, ota.Window{Start: a, End: b})
			}
			for _, d := range strings.Split(devices, ",") {
				if d != "" {
					spec.Selector.Devices = append(spec.Selector.Devices, event.DeviceID(d))
				}
			}
			if c.Flags().Changed("min-success") {
				spec.Gate.MinSuccess = &minSuccess
			}
			if c.Flags().Changed("max-failure") {
				spec.Gate.MaxFailure = &maxFailure
			}
			var out api.CampaignInfo
			if err := cl.Do(c.Context(), http.MethodPost, base, spec, &out); err != nil {
				return err
			}
			return cli.PrintOne(e.Stdout, f.output, out, campaignCols)
		}),
	}
	fl := create.Flags()
	fl.StringVar(&spec.Name, "name", "", "campaign name")
	fl.StringVar(&spec.Release, "release", "", "SHA-256 of the release (garrison firmware list)")
	fl.StringVar(&spec.Selector.Model, "model", "", "device model (required)")
	fl.StringVar(&spec.Selector.Group, "group", "", "only devices in this group")
	fl.StringVar(&spec.Selector.Tag, "tag", "", "only devices with this tag (key or key=value)")
	fl.StringVar(&spec.Selector.Firmware, "firmware", "", "only devices running this version")
	fl.StringVar(&devices, "devices", "", "only these device ids (comma-separated)")
	fl.StringVar(&waves, "waves", "1,10,50,100", "cumulative percentages of the targets per wave")
	fl.Float64Var(&minSuccess, "min-success", 0.95, "gate: share of a wave that must succeed")
	fl.Float64Var(&maxFailure, "max-failure", 0.05, "gate: share of a wave that may fail, roll back or refuse")
	fl.IntVar(&spec.Gate.MaxAlertRise, "max-alert-rise", 0, "gate: extra security alerts the updated devices may raise")
	fl.StringVar(&spec.Gate.OnFail, "on-fail", "pause", "when a gate fails: pause or abort")
	fl.IntVar(&spec.Gate.WaveTimeoutS, "wave-timeout", 0, "seconds a wave waits for final reports (0: server default)")
	fl.StringVar(&windows, "windows", "", "maintenance windows, UTC, e.g. 01:00-04:00,22:00-23:30 (none: any time)")
	fl.IntVar(&spec.MaxConcurrent, "max-concurrent", 0, "jobs in progress at once (0: server default)")
	fl.BoolVar(&spec.Emergency, "emergency", false, "security fix: every device at once, outside windows")

	list := &cobra.Command{
		Use: "list", Short: "List campaigns", Args: cobra.NoArgs,
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, _ []string) error {
			var cs []api.CampaignInfo
			if err := cl.Do(c.Context(), http.MethodGet, base, nil, &cs); err != nil {
				return err
			}
			return cli.Print(e.Stdout, f.output, cs, campaignCols)
		}),
	}
	show := &cobra.Command{
		Use: "show ID", Short: "Show a campaign with its progress per wave", Args: cobra.ExactArgs(1),
		RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
			var ci api.CampaignInfo
			if err := cl.Do(c.Context(), http.MethodGet, base+"/"+url.PathEscape(args[0]), nil, &ci); err != nil {
				return err
			}
			if f.output == "json" {
				return cli.PrintOne(e.Stdout, f.output, ci, nil)
			}
			if err := cli.PrintOne(e.Stdout, f.output, ci, campaignCols); err != nil {
				return err
			}
			fmt.Fprintln(e.Stdout)
			return cli.Print(e.Stdout, f.output, ci.Counts, []cli.Column[store.TargetCount]{
				{Header: "WAVE", Value: func(t store.TargetCount) string { return strconv.Itoa(t.Wave) }},
				{Header: "STATE", Value: func(t store.TargetCount) string { return t.State }},
				{Header: "DEVICES", Value: func(t store.TargetCount) string { return strconv.Itoa(t.N) }},
			})
		}),
	}
	var reason string
	action := func(name, short string, withReason bool) *cobra.Command {
		c := &cobra.Command{
			Use: name + " ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: run(func(c *cobra.Command, cl *cli.Client, base string, args []string) error {
				var in any
				if withReason {
					in = api.CampaignActionRequest{Reason: reason}
				}
				var ci api.CampaignInfo
				if err := cl.Do(c.Context(), http.MethodPost, base+"/"+url.PathEscape(args[0])+"/"+name, in, &ci); err != nil {
					return err
				}
				return cli.PrintOne(e.Stdout, f.output, ci, campaignCols)
			}),
		}
		if withReason {
			c.Flags().StringVar(&reason, "reason", "", "why (kept in the audit log)")
		}
		return c
	}
	cmd.AddCommand(create, list, show,
		action("pause", "Pause: no new jobs; jobs in progress finish", true),
		action("resume", "Resume a paused campaign (a failed gate's wave then counts as accepted)", false),
		action("cancel", "Cancel an open campaign", true),
		action("emergency", "Emergency mode: every remaining device at once, outside windows", false))
	return cmd
}
