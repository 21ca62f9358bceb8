package export

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/clock"
)

// SyslogOptions configure [Syslog].
type SyslogOptions struct {
	Addr string      // host:port of the collector (required)
	TLS  *tls.Config // nil: plain TCP; else TLS (RFC 5425) with this configuration
	// Hostname in the header (default: os.Hostname); AppName (default
	// "garrison").
	Hostname, AppName string
	// Facility of every message (default 10, security/authorization).
	Facility int
	// Version of Garrison, written in the OCSF metadata.
	Version     string
	DialTimeout time.Duration // default 5s
	// Control, when set, vets every address dialled (see PublicOnly).
	Control func(network, address string, c syscall.RawConn) error
	// WriteTimeout bounds one write (default 5s).
	WriteTimeout time.Duration
	Clock        clock.Clock
	Logger       *slog.Logger
}

// Syslog sends alerts to a syslog collector: RFC 5424 messages framed by
// octet counting (RFC 6587, the framing RFC 5425 mandates over TLS) on one
// long-lived TCP or TLS connection, each message's MSG an OCSF Detection
// Finding (class_uid 2004) as JSON.
//
// SendAlert returns only after the frame was written to the connection; a
// broken connection is redialled once per send. It is safe for concurrent
// use. Delivery is at least once when the caller (the bus consumer) retries
// failed sends; frames written to a connection that the collector then
// drops can be lost, as with any syslog over TCP.
type Syslog struct {
	o    SyslogOptions
	mu   sync.Mutex
	conn net.Conn
}

// NewSyslog validates o; it dials nothing.
func NewSyslog(o SyslogOptions) (*Syslog, error) {
	if _, _, err := net.SplitHostPort(o.Addr); err != nil {
		return nil, fmt.Errorf("export: syslog address %q: %w", o.Addr, err)
	}
	if o.Hostname == "" {
		o.Hostname, _ = os.Hostname()
	}
	o.Hostname = headerField(o.Hostname, 255)
	if o.AppName == "" {
		o.AppName = "garrison"
	}
	o.AppName = headerField(o.AppName, 48)
	if o.Facility == 0 {
		o.Facility = 10
	}
	if o.Facility < 0 || o.Facility > 23 {
		return nil, fmt.Errorf("export: syslog facility %d not in 0-23", o.Facility)
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 5 * time.Second
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Syslog{o: o}, nil
}

// headerField makes s a valid RFC 5424 header field: printable US-ASCII
// without spaces, at most n bytes, "-" when empty.
func headerField(s string, n int) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s) && len(b) < n; i++ {
		if c := s[i]; c >= 33 && c <= 126 {
			b = append(b, c)
		}
	}
	if len(b) == 0 {
		return "-"
	}
	return string(b)
}

func (s *Syslog) dial(ctx context.Context) (net.Conn, error) {
	d := &net.Dialer{Timeout: s.o.DialTimeout, Control: s.o.Control}
	if s.o.TLS != nil {
		td := &tls.Dialer{NetDialer: d, Config: s.o.TLS}
		return td.DialContext(ctx, "tcp", s.o.Addr)
	}
	return d.DialContext(ctx, "tcp", s.o.Addr)
}

// SendAlert writes one alert.
func (s *Syslog) SendAlert(ctx context.Context, a alert.Alert) error {
	msg, err := Message(a, s.o.Clock.Now(), s.o.Hostname, s.o.AppName, s.o.Facility, s.o.Version)
	if err != nil {
		return err
	}
	return s.write(ctx, Frame(msg))
}

func (s *Syslog) write(ctx context.Context, frame []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lastErr error
	for try := 0; try < 2; try++ {
		if s.conn == nil {
			c, err := s.dial(ctx)
			if err != nil {
				return fmt.Errorf("export: syslog dial %s: %w", s.o.Addr, err)
			}
			s.conn = c
		}
		_ = s.conn.SetWriteDeadline(time.Now().Add(s.o.WriteTimeout))
		_, err := s.conn.Write(frame)
		if err == nil {
			return nil
		}
		lastErr = err
		s.o.Logger.WarnContext(ctx, "syslog write failed; reconnecting", "addr", s.o.Addr, "err", err)
		s.conn.Close()
		s.conn = nil
	}
	return fmt.Errorf("export: syslog write %s: %w", s.o.Addr, lastErr)
}

// Close closes the connection.
func (s *Syslog) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close()
	s.conn = nil
	return err
}

// Frame prefixes msg with its length in octets (RFC 6587 octet counting).
func Frame(msg []byte) []byte {
	return append([]byte(strconv.Itoa(len(msg))+" "), msg...)
}

// syslogSeverity maps alert severities onto RFC 5424 severities.
func syslogSeverity(s alert.Severity) int {
	switch s {
	case alert.Critical:
		return 2
	case alert.High:
		return 3
	case alert.Medium:
		return 4
	case alert.Low:
		return 5
	default:
		return 6
	}
}

// Message returns the RFC 5424 message of an alert:
//
//	<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG
//
// with MSGID "alert", no structured data, and MSG the alert's OCSF
// Detection Finding as JSON.
func Message(a alert.Alert, now time.Time, host, app string, facility int, version string) ([]byte, error) {
	body, err := json.Marshal(Finding(a, version))
	if err != nil {
		return nil, fmt.Errorf("export: ocsf: %w", err)
	}
	pri := facility*8 + syslogSeverity(a.Severity)
	hdr := fmt.Sprintf("<%d>1 %s %s %s %d alert - ", pri, now.UTC().Format("2006-01-02T15:04:05.000000Z07:00"),
		headerField(host, 255), headerField(app, 48), os.Getpid())
	return append([]byte(hdr), body...), nil
}

// OCSF Detection Finding (schema 1.1), the fields Garrison fills.
type (
	// DetectionFinding is class 2004 of category 2 (Findings).
	DetectionFinding struct {
		ActivityID   int              `json:"activity_id"`
		ActivityName string           `json:"activity_name"`
		CategoryUID  int              `json:"category_uid"`
		CategoryName string           `json:"category_name"`
		ClassUID     int              `json:"class_uid"`
		ClassName    string           `json:"class_name"`
		TypeUID      int              `json:"type_uid"`
		TypeName     string           `json:"type_name"`
		SeverityID   int              `json:"severity_id"`
		Severity     string           `json:"severity"`
		StatusID     int              `json:"status_id"`
		Status       string           `json:"status"`
		Time         int64            `json:"time"` // ms since the epoch
		Message      string           `json:"message"`
		Count        int              `json:"count"`
		IsAlert      bool             `json:"is_alert"`
		Metadata     OCSFMetadata     `json:"metadata"`
		FindingInfo  OCSFFindingInfo  `json:"finding_info"`
		Device       OCSFDevice       `json:"device"`
		Evidences    []OCSFEvidence   `json:"evidences,omitempty"`
		Unmapped     map[string]any   `json:"unmapped,omitempty"`
		Observables  []OCSFObservable `json:"observables,omitempty"`
	}
	// OCSFMetadata is the event's metadata object.
	OCSFMetadata struct {
		Version   string      `json:"version"`
		Product   OCSFProduct `json:"product"`
		TenantUID string      `json:"tenant_uid"`
		UID       string      `json:"uid"`
	}
	// OCSFProduct names the reporting product.
	OCSFProduct struct {
		Name       string `json:"name"`
		VendorName string `json:"vendor_name"`
		Version    string `json:"version,omitempty"`
	}
	// OCSFFindingInfo describes the finding.
	OCSFFindingInfo struct {
		UID           string       `json:"uid"`
		Title         string       `json:"title"`
		Desc          string       `json:"desc,omitempty"`
		Types         []string     `json:"types"`
		FirstSeenTime int64        `json:"first_seen_time"`
		LastSeenTime  int64        `json:"last_seen_time"`
		Analytic      OCSFAnalytic `json:"analytic"`
	}
	// OCSFAnalytic is the detector that found it.
	OCSFAnalytic struct {
		Name   string `json:"name"`
		TypeID int    `json:"type_id"`
		Type   string `json:"type"`
	}
	// OCSFDevice is the device the finding is about.
	OCSFDevice struct {
		UID    string `json:"uid"`
		Name   string `json:"name"`
		TypeID int    `json:"type_id"`
		Type   string `json:"type"`
	}
	// OCSFEvidence carries the detector's compared values.
	OCSFEvidence struct {
		Data map[string]any `json:"data"`
	}
	// OCSFObservable is an indexed value (the device id).
	OCSFObservable struct {
		Name   string `json:"name"`
		TypeID int    `json:"type_id"`
		Type   string `json:"type"`
		Value  string `json:"value"`
	}
)

// OCSF identifiers used by [Finding].
const (
	OCSFClassDetectionFinding = 2004
	OCSFCategoryFindings      = 2
	OCSFSchemaVersion         = "1.1.0"
)

var ocsfSeverity = map[alert.Severity]string{alert.Info: "Informational", alert.Low: "Low", alert.Medium: "Medium", alert.High: "High", alert.Critical: "Critical"}

// Finding maps an alert onto an OCSF Detection Finding. A repeat of an
// alert (Count > 1) is activity Update, a first sighting Create.
func Finding(a alert.Alert, version string) DetectionFinding {
	act, actName := 1, "Create"
	if a.Count > 1 {
		act, actName = 2, "Update"
	}
	sevID, sev := int(a.Severity), ocsfSeverity[a.Severity]
	if sev == "" {
		sevID, sev = 0, "Unknown"
	}
	statusID, status := 1, "New"
	switch a.State {
	case alert.Acknowledged:
		statusID, status = 2, "In Progress"
	case alert.FalsePositive:
		statusID, status = 3, "Suppressed"
	case alert.Resolved:
		statusID, status = 4, "Resolved"
	}
	f := DetectionFinding{
		ActivityID: act, ActivityName: actName,
		CategoryUID: OCSFCategoryFindings, CategoryName: "Findings",
		ClassUID: OCSFClassDetectionFinding, ClassName: "Detection Finding",
		TypeUID: OCSFClassDetectionFinding*100 + act, TypeName: "Detection Finding: " + actName,
		SeverityID: sevID, Severity: sev, StatusID: statusID, Status: status,
		Time: a.LastSeen.UnixMilli(), Message: a.Evidence.Summary, Count: a.Count, IsAlert: true,
		Metadata: OCSFMetadata{Version: OCSFSchemaVersion, Product: OCSFProduct{Name: "Garrison", VendorName: "Garrison", Version: version},
			TenantUID: string(a.Tenant), UID: a.ID + "-" + strconv.Itoa(a.Count)},
		FindingInfo: OCSFFindingInfo{UID: a.ID, Title: string(a.Kind) + " on " + string(a.Device), Desc: a.Evidence.Summary,
			Types: []string{string(a.Kind)}, FirstSeenTime: a.FirstSeen.UnixMilli(), LastSeenTime: a.LastSeen.UnixMilli(),
			Analytic: OCSFAnalytic{Name: a.Detector, TypeID: 1, Type: "Rule"}},
		Device:      OCSFDevice{UID: string(a.Device), Name: string(a.Device), TypeID: 7, Type: "IOT"},
		Unmapped:    map[string]any{"garrison_state": string(a.State), "garrison_kind": string(a.Kind)},
		Observables: []OCSFObservable{{Name: "device.uid", TypeID: 99, Type: "Other", Value: string(a.Device)}},
	}
	if f.Message == "" {
		f.Message = f.FindingInfo.Title
	}
	if len(a.Evidence.Values) > 0 {
		f.Evidences = []OCSFEvidence{{Data: a.Evidence.Values}}
	}
	return f
}
