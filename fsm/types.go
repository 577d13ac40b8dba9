package fsm

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxNamespaceLen bounds a namespace name in bytes.
const MaxNamespaceLen = 256

var (
	// ErrInvalid classes a command the FSM refuses as malformed; the detail
	// says which field is wrong.
	ErrInvalid = errors.New("invalid command")
	// ErrSessionClosed answers a Register for a session that was deregistered
	// or whose incarnation was purged: the agent connection is already gone.
	ErrSessionClosed = errors.New("session closed")
)

// SessionID names one agent connection on one node, unique across restarts.
type SessionID struct {
	Node        string `json:"node"`
	Incarnation uint64 `json:"inc"`
	Seq         uint64 `json:"seq"`
}

// String renders the session as "node/inc/seq".
func (s SessionID) String() string {
	return s.Node + "/" + strconv.FormatUint(s.Incarnation, 10) + "/" + strconv.FormatUint(s.Seq, 10)
}

// ParseSessionID parses the String form. The numbers are taken from the right,
// so a node id that itself contains '/' still round-trips.
func ParseSessionID(s string) (SessionID, error) {
	j := strings.LastIndexByte(s, '/')
	if j < 0 {
		return SessionID{}, fmt.Errorf("session id %q: want node/inc/seq", s)
	}
	i := strings.LastIndexByte(s[:j], '/')
	if i <= 0 {
		return SessionID{}, fmt.Errorf("session id %q: want node/inc/seq", s)
	}
	inc, err := strconv.ParseUint(s[i+1:j], 10, 64)
	if err != nil {
		return SessionID{}, fmt.Errorf("session id %q: bad incarnation: %w", s, err)
	}
	seq, err := strconv.ParseUint(s[j+1:], 10, 64)
	if err != nil {
		return SessionID{}, fmt.Errorf("session id %q: bad sequence: %w", s, err)
	}
	return SessionID{Node: s[:i], Incarnation: inc, Seq: seq}, nil
}

func compareSession(a, b SessionID) int {
	if c := strings.Compare(a.Node, b.Node); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Incarnation, b.Incarnation); c != 0 {
		return c
	}
	return cmp.Compare(a.Seq, b.Seq)
}

// Registration is one live instance of a namespace.
type Registration struct {
	Namespace string    `json:"ns"`
	Address   string    `json:"addr"`    // agent "host:port"
	Session   SessionID `json:"session"` // owning node is Session.Node
	Since     int64     `json:"since"`   // unix milliseconds, stamped by the proposer
}

// compareInstance is the stable order of instances within a namespace, which
// Pick's round robin and Instances rely on.
func compareInstance(a, b Registration) int {
	if c := cmp.Compare(a.Since, b.Since); c != 0 {
		return c
	}
	if c := strings.Compare(a.Address, b.Address); c != 0 {
		return c
	}
	return compareSession(a.Session, b.Session)
}

// Validate reports, wrapped in ErrInvalid, why Apply would refuse r. A
// proposer may call it to fail fast before a round trip through the log.
func (r Registration) Validate() error {
	switch {
	case r.Namespace == "":
		return invalidf("empty namespace")
	case len(r.Namespace) > MaxNamespaceLen:
		return invalidf("namespace longer than %d bytes", MaxNamespaceLen)
	case !utf8.ValidString(r.Namespace):
		return invalidf("namespace %q is not valid UTF-8", r.Namespace)
	case hasControl(r.Namespace):
		return invalidf("namespace %q contains a control character", r.Namespace)
	case r.Session.Node == "":
		return invalidf("session has an empty node")
	}
	return validateAddress(r.Address)
}

func validateAddress(a string) error {
	if a == "" {
		return invalidf("empty address")
	}
	if hasControl(a) || !utf8.ValidString(a) {
		return invalidf("address %q contains a control character or invalid UTF-8", a)
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" {
		return invalidf("address %q is not host:port", a)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return invalidf("address %q has a bad port", a)
	}
	return nil
}

// hasControl checks bytes, not runes: every control character we refuse is
// ASCII, and bytes >= 0x80 belong to multi-byte runes.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

// NodeMeta is what the cluster knows about one node: where to forward and
// what the UI shows.
type NodeMeta struct {
	ID          string `json:"id"`
	WSAddr      string `json:"ws"`
	HTTPAddr    string `json:"http"`
	RaftAddr    string `json:"raft"`
	Incarnation uint64 `json:"inc"`
	// Features is what the node's build can read (Feature* bits). Builds before the field
	// existed announce none.
	Features uint64 `json:"feat,omitempty"`
	// Version is the node's build (wsregistry version), shown per member so a mixed-version
	// cluster during an upgrade is plain to see. Builds before the field announce none.
	Version string `json:"ver,omitempty"`
	// Draining: the node is moving its agents off (drain, or shutting down); other nodes
	// pause rebalancing while any member drains.
	Draining bool `json:"drain,omitempty"`
}

// FeatureBinaryBatch: the node reads TypeBinaryBatch entries. The cluster writes them only
// once every server has announced it (a rolling upgrade keeps writing JSON batches).
const FeatureBinaryBatch uint64 = 1

// Features is what this build can read.
const Features = FeatureBinaryBatch | FeatureAdopt | FeatureBinarySnapshot

// cmdError is the error a command returns as its Apply result. Class and
// detail are kept apart so a result remembered for request-id dedup can be
// stored in a snapshot and rebuilt equal after Restore.
type cmdError struct {
	class  error
	detail string
}

func (e *cmdError) Error() string {
	if e.detail == "" {
		return e.class.Error()
	}
	return e.class.Error() + ": " + e.detail
}

func (e *cmdError) Unwrap() error { return e.class }

func invalidf(format string, args ...any) error {
	return &cmdError{class: ErrInvalid, detail: fmt.Sprintf(format, args...)}
}

func closedf(format string, args ...any) error {
	return &cmdError{class: ErrSessionClosed, detail: fmt.Sprintf(format, args...)}
}

// result is the remembered outcome of a command with a request id; the zero
// value is success.
type result struct {
	Class  string `json:"k,omitempty"` // "", "invalid" or "closed"
	Detail string `json:"d,omitempty"`
}

const (
	classInvalid = "invalid"
	classClosed  = "closed"
)

func resultOf(err error) result {
	if err == nil {
		return result{}
	}
	var ce *cmdError
	if !errors.As(err, &ce) {
		// Only cmdErrors come out of the command handlers; anything else
		// would not round-trip through a snapshot, so it is a bug.
		panic(fmt.Sprintf("fsm: command returned an unclassified error: %v", err))
	}
	switch ce.class {
	case ErrInvalid:
		return result{Class: classInvalid, Detail: ce.detail}
	case ErrSessionClosed:
		return result{Class: classClosed, Detail: ce.detail}
	}
	panic(fmt.Sprintf("fsm: command returned an unknown error class: %v", err))
}

func (r result) err() error {
	switch r.Class {
	case "":
		return nil
	case classInvalid:
		return &cmdError{class: ErrInvalid, detail: r.Detail}
	default:
		return &cmdError{class: ErrSessionClosed, detail: r.Detail}
	}
}

func (r result) valid() bool {
	return r.Class == "" || r.Class == classInvalid || r.Class == classClosed
}
