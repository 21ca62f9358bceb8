package respond

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/garrisonhq/garrison/firmware"
	"github.com/garrisonhq/garrison/internal/alert"
	"github.com/garrisonhq/garrison/internal/registry"
)

// StepKind names what a playbook step does.
type StepKind string

// Step kinds.
const (
	StepQuarantine   StepKind = "quarantine"    // broker ACL and registry state quarantined
	StepDisconnect   StepKind = "disconnect"    // MQTT kick and RADIUS Disconnect-Request
	StepSuspendSIM   StepKind = "suspend_sim"   // block the SIM (registry state suspended, connectivity platform)
	StepRevoke       StepKind = "revoke"        // revoke the device's certificates (registry state revoked)
	StepNotify       StepKind = "notify"        // tell people (webhook)
	StepOpenIncident StepKind = "open_incident" // open or attach to an incident
	StepWaitApproval StepKind = "wait_approval" // later steps wait for a human
	// StepFreezeUpdates pauses the running firmware campaigns that target
	// the device: a rollout reaching a device under attack stops until an
	// operator resumes it (or the alert is a false positive).
	StepFreezeUpdates StepKind = "freeze_updates"
	// StepScheduleUpdate updates the device to a signed release (param
	// release: a catalog digest, or latest) through an emergency campaign
	// of its own: the way back for a device running unapproved firmware.
	StepScheduleUpdate StepKind = "schedule_update"
)

var stepKinds = map[StepKind]bool{StepQuarantine: true, StepDisconnect: true, StepSuspendSIM: true,
	StepRevoke: true, StepNotify: true, StepOpenIncident: true, StepWaitApproval: true,
	StepFreezeUpdates: true, StepScheduleUpdate: true}

// Disruptive reports whether a step kind takes a device out of service (a
// firmware update reboots it); only these count against the blast-radius
// guard.
func (k StepKind) Disruptive() bool {
	return k == StepQuarantine || k == StepDisconnect || k == StepSuspendSIM || k == StepRevoke || k == StepScheduleUpdate
}

// needsDevice reports whether a step kind acts on the alert's device (and is
// skipped when the alert names none).
func (k StepKind) needsDevice() bool { return k.Disruptive() || k == StepFreezeUpdates }

// DisruptiveKinds lists the disruptive step kinds (as stored in
// store.Action.Kind).
var DisruptiveKinds = []string{string(StepQuarantine), string(StepDisconnect), string(StepSuspendSIM), string(StepRevoke),
	string(StepScheduleUpdate)}

// Mode says whether a playbook's disruptive steps run on their own.
type Mode string

// Modes.
const (
	ModeAuto    Mode = "auto"    // steps run at once (within the blast-radius guard)
	ModeApprove Mode = "approve" // disruptive steps wait for a human
)

// Step is one step of a playbook. Params are step-specific strings (for
// notify: channel; for open_incident: title). Line is where it was declared.
type Step struct {
	Kind   StepKind          `json:"kind"`
	Params map[string]string `json:"params,omitempty"`
	Line   int               `json:"line,omitempty"`
}

// Trigger says which alerts start a playbook: any of Kinds ("*" matches
// every kind), at or above MinSeverity, on a device the Selector matches.
type Trigger struct {
	Kinds       []alert.Kind
	MinSeverity alert.Severity
	Selector    registry.Selector
}

// Playbook is a named, ordered response to alerts.
type Playbook struct {
	Name    string
	Trigger Trigger
	Mode    Mode
	Steps   []Step
	// RestoreOnFalsePositive undoes the playbook's undoable actions when the
	// alert is resolved as a false positive.
	RestoreOnFalsePositive bool
	Line                   int
}

// Matches reports whether the playbook's trigger (kind and severity) covers
// the alert. The selector is checked separately against the device.
func (p *Playbook) Matches(a alert.Alert) bool {
	if a.Severity < p.Trigger.MinSeverity {
		return false
	}
	for _, k := range p.Trigger.Kinds {
		if k == "*" || k == a.Kind {
			return true
		}
	}
	return false
}

// Problem is one validation error in a playbook document.
type Problem struct {
	Line int
	Msg  string
}

func (p Problem) String() string { return fmt.Sprintf("line %d: %s", p.Line, p.Msg) }

// ErrPlaybook is matched by every *[ParseError].
var ErrPlaybook = errors.New("invalid playbooks")

// ParseError lists every problem of a playbook document, each with its line.
type ParseError struct{ Problems []Problem }

func (e *ParseError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.String()
	}
	return "invalid playbooks: " + strings.Join(parts, "; ")
}

// Is makes the error match ErrPlaybook.
func (e *ParseError) Is(target error) bool { return target == ErrPlaybook }

// MaxPlaybookBytes bounds a playbook document.
const MaxPlaybookBytes = 1 << 20

// Parse reads a playbook document:
//
//	playbooks:
//	  - name: quarantine-sim-swap          # unique, [a-z0-9-], 1-63 chars
//	    trigger:
//	      kinds: [sim.imei_mismatch]        # alert kinds, or "*"
//	      min_severity: medium              # optional: info|low|medium|high|critical
//	      selector: model=acme-meter-2      # optional: see registry.ParseSelector
//	    mode: auto                          # auto | approve
//	    restore_on_false_positive: true     # optional
//	    steps:                              # in order
//	      - quarantine
//	      - notify: {channel: soc}
//
// Every problem is reported, each naming its line, in a *[ParseError].
// Suspending a SIM before the device is disabled (quarantine or disconnect
// in a later step) is refused: the industry order is device first.
func Parse(doc []byte) ([]Playbook, error) {
	if len(doc) > MaxPlaybookBytes {
		return nil, &ParseError{Problems: []Problem{{Line: 1, Msg: fmt.Sprintf("document larger than %d bytes", MaxPlaybookBytes)}}}
	}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &ParseError{Problems: []Problem{{Line: 1, Msg: "empty document (want a top-level playbooks: list)"}}}
		}
		return nil, &ParseError{Problems: []Problem{{Line: yamlErrLine(err), Msg: err.Error()}}}
	}
	p := &parser{}
	out := p.document(&root)
	if len(p.problems) > 0 {
		sort.SliceStable(p.problems, func(i, j int) bool { return p.problems[i].Line < p.problems[j].Line })
		return nil, &ParseError{Problems: p.problems}
	}
	return out, nil
}

// yamlErrLine extracts the line of a yaml.v3 syntax error ("yaml: line N: ...").
func yamlErrLine(err error) int {
	var n int
	msg := err.Error()
	if i := strings.Index(msg, "line "); i >= 0 {
		fmt.Sscanf(msg[i+5:], "%d", &n)
	}
	if n == 0 {
		n = 1
	}
	return n
}

type parser struct{ problems []Problem }

func (p *parser) bad(n *yaml.Node, format string, a ...any) {
	line := 1
	if n != nil && n.Line > 0 {
		line = n.Line
	}
	p.problems = append(p.problems, Problem{Line: line, Msg: fmt.Sprintf(format, a...)})
}

// fields walks a mapping node, reporting unknown and repeated keys.
func (p *parser) fields(n *yaml.Node, what string, allowed ...string) map[string]*yaml.Node {
	out := map[string]*yaml.Node{}
	if n.Kind != yaml.MappingNode {
		p.bad(n, "%s must be a mapping", what)
		return out
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		ok := false
		for _, a := range allowed {
			if a == key {
				ok = true
			}
		}
		switch {
		case !ok:
			p.bad(k, "%s: unknown key %q (allowed: %s)", what, key, strings.Join(allowed, ", "))
		case out[key] != nil:
			p.bad(k, "%s: key %q given twice", what, key)
		default:
			out[key] = v
		}
	}
	return out
}

func (p *parser) scalar(n *yaml.Node, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		p.bad(n, "%s must be a single value", what)
		return "", false
	}
	return n.Value, true
}

func (p *parser) document(root *yaml.Node) []Playbook {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	top := p.fields(n, "document", "playbooks")
	list := top["playbooks"]
	if list == nil {
		if n.Kind == yaml.MappingNode {
			p.bad(n, "missing top-level key playbooks")
		}
		return nil
	}
	if list.Kind != yaml.SequenceNode {
		p.bad(list, "playbooks must be a list")
		return nil
	}
	var out []Playbook
	names := map[string]int{}
	for _, item := range list.Content {
		pb, ok := p.playbook(item)
		if !ok {
			continue
		}
		if prev, dup := names[pb.Name]; dup {
			p.bad(item, "playbook name %q already used on line %d", pb.Name, prev)
			continue
		}
		names[pb.Name] = item.Line
		out = append(out, pb)
	}
	return out
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validKind reports whether k looks like domain.name in lower case.
func validKind(k string) bool {
	d, n, ok := strings.Cut(k, ".")
	if !ok || d == "" || n == "" || len(k) > 100 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func (p *parser) playbook(n *yaml.Node) (Playbook, bool) {
	before := len(p.problems)
	pb := Playbook{Line: n.Line}
	f := p.fields(n, "playbook", "name", "trigger", "mode", "steps", "restore_on_false_positive")
	if n.Kind != yaml.MappingNode {
		return pb, false
	}
	if v := f["name"]; v == nil {
		p.bad(n, "playbook: name is required")
	} else if s, ok := p.scalar(v, "name"); ok {
		if !validName(s) {
			p.bad(v, "name %q must be 1-63 characters of [a-z0-9-]", s)
		}
		pb.Name = s
	}
	if v := f["trigger"]; v == nil {
		p.bad(n, "playbook %q: trigger is required", pb.Name)
	} else {
		pb.Trigger = p.trigger(v)
	}
	pb.Mode = ModeAuto
	if v := f["mode"]; v != nil {
		if s, ok := p.scalar(v, "mode"); ok {
			switch Mode(s) {
			case ModeAuto, ModeApprove:
				pb.Mode = Mode(s)
			default:
				p.bad(v, "mode %q must be auto or approve", s)
			}
		}
	}
	if v := f["restore_on_false_positive"]; v != nil {
		if err := v.Decode(&pb.RestoreOnFalsePositive); err != nil || v.Kind != yaml.ScalarNode {
			p.bad(v, "restore_on_false_positive must be true or false")
		}
	}
	if v := f["steps"]; v == nil {
		p.bad(n, "playbook %q: steps are required", pb.Name)
	} else {
		pb.Steps = p.steps(v)
	}
	return pb, len(p.problems) == before
}

func (p *parser) trigger(n *yaml.Node) Trigger {
	var t Trigger
	f := p.fields(n, "trigger", "kinds", "min_severity", "selector")
	if n.Kind != yaml.MappingNode {
		return t
	}
	kinds := f["kinds"]
	switch {
	case kinds == nil:
		p.bad(n, "trigger: kinds is required")
	case kinds.Kind == yaml.ScalarNode:
		kinds = &yaml.Node{Kind: yaml.SequenceNode, Content: []*yaml.Node{kinds}, Line: kinds.Line}
		fallthrough
	case kinds.Kind == yaml.SequenceNode:
		if len(kinds.Content) == 0 {
			p.bad(kinds, "trigger: kinds is empty")
		}
		for _, k := range kinds.Content {
			s, ok := p.scalar(k, "alert kind")
			if !ok {
				continue
			}
			if s != "*" && !validKind(s) {
				p.bad(k, "alert kind %q must be domain.name in lower case, or *", s)
				continue
			}
			t.Kinds = append(t.Kinds, alert.Kind(s))
		}
	default:
		p.bad(kinds, "trigger: kinds must be a list")
	}
	t.MinSeverity = alert.Info
	if v := f["min_severity"]; v != nil {
		if s, ok := p.scalar(v, "min_severity"); ok {
			if sev := alert.ParseSeverity(s); sev == 0 {
				p.bad(v, "min_severity %q must be info, low, medium, high or critical", s)
			} else {
				t.MinSeverity = sev
			}
		}
	}
	if v := f["selector"]; v != nil {
		if s, ok := p.scalar(v, "selector"); ok {
			sel, err := registry.ParseSelector(s)
			if err != nil {
				p.bad(v, "selector: %v", err)
			}
			t.Selector = sel
		}
	}
	return t
}

// stepParams lists the parameters each step kind accepts.
var stepParams = map[StepKind][]string{
	StepNotify:         {"channel"},
	StepOpenIncident:   {"title"},
	StepDisconnect:     {},
	StepQuarantine:     {},
	StepSuspendSIM:     {},
	StepRevoke:         {},
	StepWaitApproval:   {},
	StepFreezeUpdates:  {},
	StepScheduleUpdate: {"release"},
}

// LatestRelease is the schedule_update release that means the newest
// signed release of the catalog for the device's model.
const LatestRelease = "latest"

func (p *parser) steps(n *yaml.Node) []Step {
	if n.Kind != yaml.SequenceNode {
		p.bad(n, "steps must be a list")
		return nil
	}
	if len(n.Content) == 0 {
		p.bad(n, "steps is empty")
	}
	var out []Step
	for _, item := range n.Content {
		st := Step{Line: item.Line}
		var params *yaml.Node
		switch item.Kind {
		case yaml.ScalarNode:
			st.Kind = StepKind(item.Value)
		case yaml.MappingNode:
			if len(item.Content) != 2 {
				p.bad(item, "a step is a kind (`- quarantine`) or one kind with parameters (`- notify: {channel: soc}`)")
				continue
			}
			st.Kind = StepKind(item.Content[0].Value)
			params = item.Content[1]
		default:
			p.bad(item, "a step is a kind (`- quarantine`) or one kind with parameters (`- notify: {channel: soc}`)")
			continue
		}
		if st.Kind == "wait" || st.Kind == "require" {
			st.Kind = StepWaitApproval // the short names: `- wait`, `- require`
		}
		if !stepKinds[st.Kind] {
			p.bad(item, "unknown step %q (want quarantine, disconnect, suspend_sim, revoke, freeze_updates, schedule_update, notify, open_incident or wait_approval)", st.Kind)
			continue
		}
		if params != nil && !(params.Kind == yaml.ScalarNode && params.Tag == "!!null") {
			allowed := stepParams[st.Kind]
			f := p.fields(params, "step "+string(st.Kind), allowed...)
			for k, v := range f {
				if s, ok := p.scalar(v, k); ok {
					if st.Params == nil {
						st.Params = map[string]string{}
					}
					st.Params[k] = s
				}
			}
		}
		if st.Kind == StepScheduleUpdate {
			if r := st.Params["release"]; r != LatestRelease && !firmware.IsHex(r, 32) {
				p.bad(item, "schedule_update needs release: latest, or the 64-hex SHA-256 of a catalog release (`- schedule_update: {release: latest}`)")
			}
		}
		out = append(out, st)
	}
	// Disable the device before suspending its SIM.
	for i, st := range out {
		if st.Kind != StepSuspendSIM {
			continue
		}
		for _, later := range out[i+1:] {
			if later.Kind == StepQuarantine || later.Kind == StepDisconnect {
				p.bad(&yaml.Node{Line: st.Line}, "suspend_sim comes before %s (line %d): disable the device before suspending its SIM", later.Kind, later.Line)
				break
			}
		}
	}
	return out
}

//go:embed defaults.yaml
var defaultsYAML []byte

// DefaultYAML returns the playbook document used by a tenant that has not
// uploaded its own.
func DefaultYAML() []byte { return bytes.Clone(defaultsYAML) }

// Defaults returns the default playbooks (parsed from [DefaultYAML]).
func Defaults() ([]Playbook, error) { return Parse(defaultsYAML) }

// ParseOne reads a document holding one playbook, as uploaded under its
// name: either the playbook's own mapping
//
//	name: quarantine-sim-swap     # optional; must equal name if given
//	trigger: {kinds: [sim.imei_mismatch]}
//	mode: auto
//	steps: [quarantine, disconnect]
//
// or a `playbooks:` list holding exactly that one playbook. Errors are a
// *[ParseError] whose problems name their lines in doc.
func ParseOne(doc []byte, name string) (Playbook, error) {
	bad := func(line int, format string, a ...any) (Playbook, error) {
		return Playbook{}, &ParseError{Problems: []Problem{{Line: line, Msg: fmt.Sprintf(format, a...)}}}
	}
	if !validName(name) {
		return bad(1, "name %q must be 1-63 characters of [a-z0-9-]", name)
	}
	if len(doc) > MaxPlaybookBytes {
		return bad(1, "document larger than %d bytes", MaxPlaybookBytes)
	}
	var root yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(doc)).Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return bad(1, "empty document (want a playbook: name, trigger, mode, steps)")
		}
		return bad(yamlErrLine(err), "%s", err.Error())
	}
	n := &root
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return bad(n.Line, "a playbook must be a mapping (name, trigger, mode, steps)")
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "playbooks" {
			pbs, err := Parse(doc)
			if err != nil {
				return Playbook{}, err
			}
			if len(pbs) != 1 {
				return bad(n.Content[i].Line, "playbooks: want exactly one playbook here, got %d", len(pbs))
			}
			if pbs[0].Name != name {
				return bad(pbs[0].Line, "playbook name %q differs from %q, the name it is uploaded as", pbs[0].Name, name)
			}
			return pbs[0], nil
		}
	}
	hasName := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; k.Value == "name" {
			hasName = true
			if v := n.Content[i+1]; v.Kind == yaml.ScalarNode && v.Value != name {
				return bad(v.Line, "playbook name %q differs from %q, the name it is uploaded as", v.Value, name)
			}
		}
	}
	if !hasName {
		n.Content = append([]*yaml.Node{{Kind: yaml.ScalarNode, Value: "name", Line: n.Line},
			{Kind: yaml.ScalarNode, Value: name, Line: n.Line}}, n.Content...)
	}
	p := &parser{}
	pb, ok := p.playbook(n)
	if len(p.problems) > 0 || !ok {
		sort.SliceStable(p.problems, func(i, j int) bool { return p.problems[i].Line < p.problems[j].Line })
		return Playbook{}, &ParseError{Problems: p.problems}
	}
	return pb, nil
}

// defaultDocs splits the default document into one standalone document per
// playbook (what [ParseOne] reads), by name, in the order declared.
func defaultDocs() (names []string, docs map[string]string, err error) {
	pbs, err := Parse(defaultsYAML)
	if err != nil {
		return nil, nil, err
	}
	lines := strings.SplitAfter(string(defaultsYAML), "\n")
	docs = map[string]string{}
	for i, pb := range pbs {
		end := len(lines)
		if i+1 < len(pbs) {
			end = pbs[i+1].Line - 1
		}
		item := lines[pb.Line-1 : end]
		dash := strings.Index(item[0], "- ")
		var b strings.Builder
		for j, l := range item {
			if j == 0 {
				l = strings.Repeat(" ", dash) + "  " + l[dash+2:]
			}
			if len(l) >= dash+2 && strings.TrimSpace(l[:dash+2]) == "" {
				l = l[dash+2:]
			}
			b.WriteString(l)
		}
		names = append(names, pb.Name)
		docs[pb.Name] = b.String()
	}
	return names, docs, nil
}
