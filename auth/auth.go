// Package auth decides who may do what: tokens and their scopes, the networks trusted without
// a credential, and the audit lines of mutations and refusals.
//
// Tokens come from --admin-token (a grant named "admin-token" with scope admin), --agent-token
// (a grant named "agent-token" with scope agent) and --token-file, re-read by Reload (SIGHUP).
// The token file holds one grant per line:
//
//	# NAME   SCOPES       TOKEN                             [NAMESPACES]
//	ci       admin        3f9c0d6e5b1a48c7a2e4d8b0f6c1e9a7
//	grafana  read         8d2b4f6a0c9e1d3b5a7f2c4e6b8d0a1f
//	pay      agent        c5e7a9b1d3f5e7a9b1c3d5e7f9a1b3c5  payments-*,billing
//
// Fields are separated by whitespace. SCOPES is a comma-separated list of admin, fetch, read
// and agent; NAMESPACES, only meaningful with agent, is a comma-separated list of patterns in
// which '*' matches any run of characters. Blank lines and lines whose first non-blank
// character is '#' are ignored; '#' later in a line is not a comment, since tokens may contain
// it. Names must be unique and must not be one of the reserved names admin-token,
// agent-token, trusted-network and anonymous; tokens must be unique across the file and the
// flags. Errors name the file and line, never the token.
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
)

// Scope is a set of permissions; a Grant holds one or more.
type Scope uint8

const (
	ScopeRead  Scope = 1 << iota // where, namespaces, cluster, watch, metrics, dashboard
	ScopeFetch                   // POST /v1/fetch: call agents through the registry
	ScopeAdmin                   // join, leave, remove, snapshot, debug switches
	ScopeAgent                   // connect on the agent port and register namespaces
)

// scopeOrder is the order String writes and error messages list scopes in.
func scopeOrder() [4]Scope { return [4]Scope{ScopeAdmin, ScopeFetch, ScopeRead, ScopeAgent} }

func scopeName(s Scope) string {
	switch s {
	case ScopeAdmin:
		return "admin"
	case ScopeFetch:
		return "fetch"
	case ScopeRead:
		return "read"
	case ScopeAgent:
		return "agent"
	}
	return ""
}

const knownScopes = "admin, fetch, read, agent"

// ParseScopes parses a comma-separated list such as "admin,fetch". Unknown names are an
// error that names them all; an empty list is an error too, since a grant without a scope
// can do nothing.
func ParseScopes(s string) (Scope, error) {
	sc, unknown := parseScopes(s)
	if len(unknown) > 0 {
		return 0, fmt.Errorf("unknown scope %s (known: %s)", quoteList(unknown), knownScopes)
	}
	if sc == 0 {
		return 0, fmt.Errorf("no scope given (known: %s)", knownScopes)
	}
	return sc, nil
}

// parseScopes returns the known scopes and the unknown names, so the token file can decide
// whether an unknown name is safe to show (it may be a token written in the wrong field).
func parseScopes(s string) (Scope, []string) {
	var sc Scope
	var unknown []string
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		found := false
		for _, k := range scopeOrder() {
			if strings.EqualFold(name, scopeName(k)) {
				sc |= k
				found = true
			}
		}
		if !found {
			unknown = append(unknown, name)
		}
	}
	return sc, unknown
}

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}

// String lists the scopes as ParseScopes reads them ("admin,fetch"); "none" for no scope.
func (s Scope) String() string {
	var names []string
	rest := s
	for _, k := range scopeOrder() {
		if s&k != 0 {
			names = append(names, scopeName(k))
			rest &^= k
		}
	}
	if rest != 0 {
		names = append(names, fmt.Sprintf("scope(%#x)", uint8(rest)))
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// Grant is what a token allows. Grants returned by Lookup and GrantFrom are shared: do not
// modify them.
type Grant struct {
	Name       string   // shown in logs and audit lines instead of the token
	Scopes     Scope    // what the token may do; see Has
	Namespaces []string // patterns an agent token may register ("payments-*"); empty: any

	digest [sha256.Size]byte // of its token: Current finds the grant again after a reload
}

// Has reports whether g holds every scope in s. Admin implies read and fetch, since an
// operator who may change the membership may as well look at it; agent is separate so that
// a token handed to every agent host never opens the HTTP API.
func (g *Grant) Has(s Scope) bool {
	if g == nil || s == 0 {
		return false
	}
	eff := g.Scopes
	if eff&ScopeAdmin != 0 {
		eff |= ScopeRead | ScopeFetch
	}
	return eff&s == s
}

// AllowsNamespace reports whether an agent holding g may register ns. A nil grant (no agent
// tokens configured) or a grant without patterns allows any namespace.
func (g *Grant) AllowsNamespace(ns string) bool {
	if g == nil || len(g.Namespaces) == 0 {
		return true
	}
	for _, p := range g.Namespaces {
		if matchPattern(p, ns) {
			return true
		}
	}
	return false
}

// matchPattern matches s against p, in which '*' matches any run of bytes (including none)
// and every other byte only itself. It backtracks only to the last '*', so it runs in
// O(len(p)*len(s)) at worst whatever the pattern.
func matchPattern(p, s string) bool {
	pi, si := 0, 0
	star, starS := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && p[pi] == '*':
			star, starS = pi, si
			pi++
		case pi < len(p) && p[pi] == s[si]:
			pi++
			si++
		case star >= 0:
			starS++
			pi, si = star+1, starS
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// Config is what the flags say about authentication.
type Config struct {
	AdminToken      string              // --admin-token: a grant named "admin-token" with ScopeAdmin
	AgentToken      string              // --agent-token: a grant named "agent-token" with ScopeAgent
	TokenFile       string              // --token-file, re-read by Reload (SIGHUP)
	TrustedNetworks []netip.Prefix      // --trusted-networks; nil: 127.0.0.0/8 and ::1/128
	Logger          *slog.Logger        // nil: discard
	OnRefusal       func(reason string) // metric hook; reason is one of the Reason* constants
}

// Refusal reasons: bounded metric label values.
const (
	ReasonNoToken   = "no_token"  // a credential is configured and none was sent
	ReasonBadToken  = "bad_token" // the token matches no grant
	ReasonScope     = "scope"     // the token lacks the scope
	ReasonUntrusted = "untrusted" // no credential configured and the caller is outside --trusted-networks
	ReasonNamespace = "namespace" // an agent token may not register that namespace
	ReasonPeer      = "peer"      // a node-to-node connection failed authentication
)

// Names that never come from the token file, so an audit line always means what it says.
const (
	nameAdminFlag = "admin-token"
	nameAgentFlag = "agent-token"
	nameTrusted   = "trusted-network"
	nameAnonymous = "anonymous"
)

// minTokenLen is the length under which a token is accepted but warned about: shorter
// tokens can be guessed by anyone who can reach the port for long enough.
const minTokenLen = 16

// defaultTrusted is what --trusted-networks means when not given: this host only.
func defaultTrusted() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
}

// ParseNetworks parses --trusted-networks: comma-separated prefixes or bare addresses
// ("127.0.0.0/8,::1/128,10.1.2.3"; a bare address becomes /32 or /128). The empty string
// returns nil, which New reads as the default (loopback); "none" returns an empty, non-nil
// list: no network is trusted.
func ParseNetworks(s string) ([]netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if strings.EqualFold(s, "none") {
		return []netip.Prefix{}, nil
	}
	var out []netip.Prefix
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		var p netip.Prefix
		if strings.Contains(f, "/") {
			var err error
			if p, err = netip.ParsePrefix(f); err != nil {
				return nil, fmt.Errorf("trusted network %q: %w", f, err)
			}
		} else {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("trusted network %q: want a prefix (10.0.0.0/8) or an address: %w", f, err)
			}
			if a.Zone() != "" {
				return nil, fmt.Errorf("trusted network %q: an IPv6 zone is not allowed", f)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, normalizePrefix(p))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("trusted networks %q: no network given (use \"none\" to trust none)", s)
	}
	return out, nil
}

// normalizePrefix masks p and turns an IPv4-mapped IPv6 prefix into the IPv4 prefix it
// means, because Trusted compares unmapped addresses.
func normalizePrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// entry is one configured token: only its digest is kept.
type entry struct {
	digest [sha256.Size]byte
	grant  *Grant
}

// grantSet is every configured token at one moment; Reload swaps in a new one.
type grantSet struct {
	entries    []entry
	fileGrants int // how many came from the token file, for the reload log line
}

// Authority answers every authentication question for one node. It is safe for concurrent use.
type Authority struct {
	file      string
	log       *slog.Logger
	onRefusal func(string)
	trusted   []netip.Prefix
	flags     []entry // from --admin-token and --agent-token; never reloaded

	reloadMu sync.Mutex // one Reload at a time, so the last file read is the one kept
	set      atomic.Pointer[grantSet]

	refusalLog logLimiter
	now        func() time.Time // replaced in tests to drive the refusal log limit
}

// New checks cfg and loads the token file. Errors name the file and line, never a token.
func New(cfg Config) (*Authority, error) {
	a := &Authority{
		file:      cfg.TokenFile,
		log:       cfg.Logger,
		onRefusal: cfg.OnRefusal,
		now:       time.Now,
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if cfg.TrustedNetworks == nil {
		a.trusted = defaultTrusted()
	} else {
		a.trusted = make([]netip.Prefix, 0, len(cfg.TrustedNetworks))
		for _, p := range cfg.TrustedNetworks {
			if !p.IsValid() {
				return nil, errors.New("trusted networks: invalid prefix")
			}
			a.trusted = append(a.trusted, normalizePrefix(p))
		}
	}
	for _, f := range []struct {
		flag, token, name string
		scope             Scope
	}{
		{"--admin-token", cfg.AdminToken, nameAdminFlag, ScopeAdmin},
		{"--agent-token", cfg.AgentToken, nameAgentFlag, ScopeAgent},
	} {
		if f.token == "" {
			continue
		}
		if strings.IndexFunc(f.token, unicode.IsSpace) >= 0 {
			// Header values lose surrounding blanks in transit, so such a token could never match.
			return nil, fmt.Errorf("%s contains whitespace", f.flag)
		}
		if len(f.token) < minTokenLen {
			a.log.Warn("token shorter than 16 characters", "grant", f.name)
		}
		d := sha256.Sum256([]byte(f.token))
		e := entry{digest: d, grant: &Grant{Name: f.name, Scopes: f.scope, digest: d}}
		for _, prev := range a.flags {
			if prev.digest == e.digest {
				// One token, two grants: Lookup could not say which is meant.
				return nil, errors.New("--admin-token and --agent-token must differ")
			}
		}
		a.flags = append(a.flags, e)
	}
	set := &grantSet{entries: a.flags}
	if a.file != "" {
		var err error
		if set, err = a.load(); err != nil {
			return nil, err
		}
		a.log.Info("token file loaded", "file", a.file, "grants", set.fileGrants)
	}
	a.set.Store(set)
	return a, nil
}

// Reload re-reads the token file. On error it keeps the previous tokens and returns the
// error for the caller to log; the flag tokens never change. Without a token file it does
// nothing.
func (a *Authority) Reload() error {
	if a.file == "" {
		return nil
	}
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	set, err := a.load()
	if err != nil {
		return err
	}
	a.set.Store(set)
	a.log.Info("token file reloaded", "file", a.file, "grants", set.fileGrants)
	return nil
}

// Trusted reports whether remoteAddr ("ip:port" or "ip") lies in --trusted-networks.
// Anything unparsable (a Unix socket's "@", an empty string) is not trusted.
func (a *Authority) Trusted(remoteAddr string) bool {
	var addr netip.Addr
	if ap, err := netip.ParseAddrPort(remoteAddr); err == nil {
		addr = ap.Addr()
	} else if ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(remoteAddr, "["), "]")); err == nil {
		addr = ip
	} else {
		return false
	}
	addr = addr.WithZone("").Unmap()
	for _, p := range a.trusted {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// Lookup finds the grant of token. It compares the token's SHA-256 digest with every
// configured digest and never stops early, so the time taken says nothing about which
// tokens exist or how much of one was right.
func (a *Authority) Lookup(token string) (*Grant, bool) {
	d := sha256.Sum256([]byte(token))
	entries := a.set.Load().entries
	found, idx := 0, 0
	for i := range entries {
		eq := subtle.ConstantTimeCompare(d[:], entries[i].digest[:])
		idx = subtle.ConstantTimeSelect(eq, i, idx)
		found |= eq
	}
	if found == 0 {
		return nil, false
	}
	return entries[idx].grant, true
}

// CurrentAgent re-checks, against the tokens in force now, the grant a connection was
// accepted with (nil: accepted while no agent token existed). A long-lived agent
// connection calls it before each registration, so a token removed or narrowed by a reload
// stops registering at once: ok is false when that token is gone or lost the agent scope,
// or when the connection came without a token and agent tokens are now required.
func (a *Authority) CurrentAgent(g *Grant) (*Grant, bool) {
	if g == nil {
		return nil, !a.Configured(ScopeAgent)
	}
	for _, e := range a.set.Load().entries {
		if e.digest == g.digest {
			return e.grant, e.grant.Has(ScopeAgent)
		}
	}
	return nil, false
}

// Configured reports whether some grant Has(s). Since admin implies read and fetch, an admin
// token makes Configured(ScopeFetch) true; Require's read rule deliberately looks only at
// grants that name read (see hasExplicit).
func (a *Authority) Configured(s Scope) bool {
	for _, e := range a.set.Load().entries {
		if e.grant.Has(s) {
			return true
		}
	}
	return false
}

// hasExplicit reports whether some grant names s itself, without admin's implications.
func (a *Authority) hasExplicit(s Scope) bool {
	for _, e := range a.set.Load().entries {
		if e.grant.Scopes&s == s {
			return true
		}
	}
	return false
}
