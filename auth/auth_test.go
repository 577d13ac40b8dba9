package auth

import (
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/internal/testutil"
)

// Tokens long and distinctive enough that finding one in a body or a log is never a fluke.
const (
	adminTok = "ADMIN-SECRET-0a1b2c3d4e5f6789"
	agentTok = "AGENT-SECRET-9f8e7d6c5b4a3210"
	readTok  = "READ-SECRET-00112233445566778"
	fetchTok = "FETCH-SECRET-8899aabbccddeeff"
	payTok   = "PAY-SECRET-0123456789abcdefgh"
	wrongTok = "WRONG-SECRET-ffffffffffffffff"
)

// logBuffer collects log output from concurrent handlers.
type logBuffer struct{ testutil.LogBuffer }

func (l *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// assertNoSecret fails if any test token appears in s.
func assertNoSecret(t *testing.T, where, s string) {
	t.Helper()
	for _, tok := range []string{adminTok, agentTok, readTok, fetchTok, payTok, wrongTok} {
		if strings.Contains(s, tok) {
			t.Errorf("%s contains the token %q:\n%s", where, tok, s)
		}
	}
}

func writeTokenFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustNew(t *testing.T, cfg Config) *Authority {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

func TestParseScopes_ParsesListsAndNamesUnknowns(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Scope
		wantErr []string // substrings of the error; nil: no error
	}{
		{in: "admin", want: ScopeAdmin},
		{in: "admin,fetch", want: ScopeAdmin | ScopeFetch},
		{in: " read , agent ", want: ScopeRead | ScopeAgent},
		{in: "Fetch", want: ScopeFetch},
		{in: "admin,bogus,fetch,nope", wantErr: []string{`"bogus"`, `"nope"`, "admin, fetch, read, agent"}},
		{in: "", wantErr: []string{"no scope"}},
		{in: ",", wantErr: []string{"no scope"}},
	} {
		got, err := ParseScopes(tc.in)
		if tc.wantErr == nil {
			if err != nil || got != tc.want {
				t.Errorf("ParseScopes(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("ParseScopes(%q) = %v; want an error", tc.in, got)
			continue
		}
		for _, w := range tc.wantErr {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("ParseScopes(%q) error %q does not mention %s", tc.in, err, w)
			}
		}
	}
}

func TestScopeString_RoundTrips(t *testing.T) {
	for _, tc := range []struct {
		s    Scope
		want string
	}{
		{ScopeAdmin | ScopeFetch, "admin,fetch"},
		{ScopeRead, "read"},
		{ScopeAgent | ScopeRead | ScopeAdmin | ScopeFetch, "admin,fetch,read,agent"},
		{0, "none"},
		{ScopeRead | 0x40, "read,scope(0x40)"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("Scope(%#x).String() = %q; want %q", uint8(tc.s), got, tc.want)
		}
		if tc.s != 0 && tc.s&0xf0 == 0 {
			if back, err := ParseScopes(tc.want); err != nil || back != tc.s {
				t.Errorf("ParseScopes(%q) = %v, %v; want %v", tc.want, back, err, tc.s)
			}
		}
	}
}

func TestGrantHas_AdminImpliesReadAndFetchNotAgent(t *testing.T) {
	admin := &Grant{Scopes: ScopeAdmin}
	fetch := &Grant{Scopes: ScopeFetch}
	agent := &Grant{Scopes: ScopeAgent}
	var none *Grant
	for _, tc := range []struct {
		g    *Grant
		s    Scope
		want bool
	}{
		{admin, ScopeAdmin, true},
		{admin, ScopeRead, true},
		{admin, ScopeFetch, true},
		{admin, ScopeRead | ScopeFetch, true},
		{admin, ScopeAgent, false},
		{fetch, ScopeFetch, true},
		{fetch, ScopeRead, false},
		{fetch, ScopeAdmin, false},
		{agent, ScopeAgent, true},
		{agent, ScopeRead, false},
		{none, ScopeRead, false},
		{admin, 0, false},
	} {
		if got := tc.g.Has(tc.s); got != tc.want {
			t.Errorf("%+v.Has(%v) = %v; want %v", tc.g, tc.s, got, tc.want)
		}
	}
}

func TestAllowsNamespace_StarMatchesAnyRun(t *testing.T) {
	g := &Grant{Namespaces: []string{"payments-*", "billing", "*-eu-*", "a*b*c"}}
	for _, tc := range []struct {
		ns   string
		want bool
	}{
		{"payments-", true},
		{"payments-api", true},
		{"payments", false},
		{"xpayments-api", false},
		{"billing", true},
		{"billing2", false},
		{"orders-eu-1", true},
		{"-eu-", true},
		{"orders-us-1", false},
		{"abc", true},
		{"axxbyyc", true},
		{"axxbyy", false},
		{"a?c", false},
	} {
		if got := g.AllowsNamespace(tc.ns); got != tc.want {
			t.Errorf("AllowsNamespace(%q) = %v; want %v", tc.ns, got, tc.want)
		}
	}
	// Only '*' is special.
	if (&Grant{Namespaces: []string{"a.c"}}).AllowsNamespace("abc") {
		t.Error(`"a.c" matched "abc"`)
	}
	if !(&Grant{Namespaces: []string{"a?c"}}).AllowsNamespace("a?c") || (&Grant{Namespaces: []string{"a?c"}}).AllowsNamespace("abc") {
		t.Error(`"?" must match only itself`)
	}
	if !(&Grant{Namespaces: []string{"*"}}).AllowsNamespace("") {
		t.Error(`"*" must match the empty namespace`)
	}
	var nilGrant *Grant
	if !nilGrant.AllowsNamespace("anything") || !(&Grant{}).AllowsNamespace("anything") {
		t.Error("a nil grant or one without patterns must allow any namespace")
	}
	// Many stars against a long mismatch must stay fast (no exponential backtracking).
	start := time.Now()
	matchPattern(strings.Repeat("*a", 30)+"b", strings.Repeat("a", 5000))
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("pathological pattern took %v", d)
	}
}

func TestParseNetworks_ParsesAndReportsErrors(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string // the prefixes joined by ","; "<nil>" for nil
		wantErr string
	}{
		{in: "127.0.0.0/8,::1/128,10.1.2.3", want: "127.0.0.0/8,::1/128,10.1.2.3/32"},
		{in: " 10.0.0.0/8 , fd00::1 ", want: "10.0.0.0/8,fd00::1/128"},
		{in: "10.1.2.3/8", want: "10.0.0.0/8"},
		{in: "::ffff:10.0.0.0/104", want: "10.0.0.0/8"},
		{in: "::ffff:10.1.2.3", want: "10.1.2.3/32"},
		{in: "", want: "<nil>"},
		{in: "none", want: ""},
		{in: "10.0.0.0/33", wantErr: `"10.0.0.0/33"`},
		{in: "10.0.0.300", wantErr: `"10.0.0.300"`},
		{in: "localhost", wantErr: `"localhost"`},
		{in: "127.0.0.1,nope/8", wantErr: `"nope/8"`},
		{in: "fe80::1%eth0", wantErr: "zone"},
		{in: ",,", wantErr: "no network"},
	} {
		got, err := ParseNetworks(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseNetworks(%q) = %v, %v; want an error mentioning %s", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseNetworks(%q): %v", tc.in, err)
			continue
		}
		s := "<nil>"
		if got != nil {
			parts := make([]string, len(got))
			for i, p := range got {
				parts[i] = p.String()
			}
			s = strings.Join(parts, ",")
		}
		if s != tc.want {
			t.Errorf("ParseNetworks(%q) = %s; want %s", tc.in, s, tc.want)
		}
	}
}

func TestTrusted_LoopbackByDefaultAndConfiguredNetworks(t *testing.T) {
	def := mustNew(t, Config{})
	custom := mustNew(t, Config{TrustedNetworks: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("::ffff:192.168.1.0/120")}})
	none := mustNew(t, Config{TrustedNetworks: []netip.Prefix{}})
	for _, tc := range []struct {
		a      *Authority
		remote string
		want   bool
	}{
		{def, "127.0.0.1:5555", true},
		{def, "127.8.9.10:1", true},
		{def, "[::1]:5555", true},
		{def, "::1", true},
		{def, "[::1]", true},
		{def, "127.0.0.1", true},
		{def, "[::ffff:127.0.0.1]:80", true},
		{def, "192.0.2.7:5555", false},
		{def, "[2001:db8::1]:80", false},
		{def, "[fe80::1%eth0]:80", false},
		{def, "@", false},
		{def, "", false},
		{def, "garbage", false},
		{custom, "10.1.200.3:9", true},
		{custom, "10.2.0.1:9", false},
		{custom, "127.0.0.1:9", false},
		{custom, "192.168.1.77:9", true},
		{custom, "[::ffff:10.1.0.1]:9", true},
		{none, "127.0.0.1:9", false},
	} {
		if got := tc.a.Trusted(tc.remote); got != tc.want {
			t.Errorf("Trusted(%q) = %v; want %v (networks %v)", tc.remote, got, tc.want, tc.a.trusted)
		}
	}
}

func TestNew_RejectsBadFlagTokens(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"same admin and agent token", Config{AdminToken: adminTok, AgentToken: adminTok}, "must differ"},
		{"whitespace", Config{AdminToken: adminTok + " "}, "--admin-token contains whitespace"},
		{"invalid prefix", Config{TrustedNetworks: []netip.Prefix{{}}}, "invalid"},
		{"missing file", Config{TokenFile: filepath.Join(t.TempDir(), "absent")}, "absent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v; want an error mentioning %q", err, tc.want)
			}
			assertNoSecret(t, "error", err.Error())
		})
	}
	_, err := New(Config{TokenFile: filepath.Join(t.TempDir(), "absent")})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing token file: %v does not wrap os.ErrNotExist", err)
	}
}

func TestLookup_FindsEveryConfiguredToken(t *testing.T) {
	file := writeTokenFile(t, "reader read "+readTok+"\nfetcher fetch "+fetchTok+"\n")
	a := mustNew(t, Config{AdminToken: adminTok, AgentToken: agentTok, TokenFile: file})
	for _, tc := range []struct {
		tok, name string
	}{
		{adminTok, "admin-token"},
		{agentTok, "agent-token"},
		{readTok, "reader"},
		{fetchTok, "fetcher"},
		{wrongTok, ""},
		{"", ""},
		{adminTok[:len(adminTok)-1], ""},
	} {
		g, ok := a.Lookup(tc.tok)
		if (tc.name != "") != ok || (ok && g.Name != tc.name) {
			t.Errorf("Lookup(%q) = %+v, %v; want %q", tc.tok, g, ok, tc.name)
		}
	}
}

func TestConfigured_FollowsHas(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		file string
		want map[Scope]bool
	}{
		{"nothing", Config{}, "", map[Scope]bool{ScopeRead: false, ScopeFetch: false, ScopeAdmin: false, ScopeAgent: false}},
		{"admin flag", Config{AdminToken: adminTok}, "", map[Scope]bool{ScopeRead: true, ScopeFetch: true, ScopeAdmin: true, ScopeAgent: false}},
		{"agent flag", Config{AgentToken: agentTok}, "", map[Scope]bool{ScopeRead: false, ScopeFetch: false, ScopeAdmin: false, ScopeAgent: true}},
		{"fetch in file", Config{}, "f fetch " + fetchTok, map[Scope]bool{ScopeRead: false, ScopeFetch: true, ScopeAdmin: false, ScopeAgent: false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.file != "" {
				tc.cfg.TokenFile = writeTokenFile(t, tc.file)
			}
			a := mustNew(t, tc.cfg)
			for s, want := range tc.want {
				if got := a.Configured(s); got != want {
					t.Errorf("Configured(%v) = %v; want %v", s, got, want)
				}
			}
		})
	}
}

func TestAudit_NamesTheGrantNeverTheToken(t *testing.T) {
	var logs logBuffer
	a := mustNew(t, Config{AdminToken: adminTok, Logger: logs.logger()})
	var seen *Grant
	h := a.Require(ScopeAdmin, "remove node n2", func(w http.ResponseWriter, r *http.Request) {
		seen = GrantFrom(r.Context())
		a.Audit(r, "remove node n2", nil)
		a.Audit(r, "remove node n3", errors.New("no such node"))
	})
	r := httptest.NewRequest("POST", "/v1/cluster/remove?token="+adminTok, nil)
	r.RemoteAddr = "192.0.2.9:4000"
	h(httptest.NewRecorder(), r)
	if seen == nil || seen.Name != "admin-token" {
		t.Fatalf("grant in context = %+v; want admin-token", seen)
	}
	out := logs.String()
	for _, want := range []string{
		`level=INFO msg=audit audit="remove node n2" remote=192.0.2.9:4000 token=admin-token result=ok`,
		`audit="remove node n3" remote=192.0.2.9:4000 token=admin-token result="no such node"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	assertNoSecret(t, "log", out)

	// Without Require, nothing is in the context.
	a.Audit(httptest.NewRequest("POST", "/", nil), "snapshot", nil)
	if !strings.Contains(logs.String(), `audit=snapshot remote=192.0.2.1:1234 token=anonymous result=ok`) {
		t.Errorf("audit without a grant: %s", logs.String())
	}
}

func TestRefuse_LogIsRateLimitedButEveryRefusalCounted(t *testing.T) {
	var logs logBuffer
	var mu sync.Mutex
	counted := map[string]int{}
	a := mustNew(t, Config{Logger: logs.logger(), OnRefusal: func(reason string) {
		mu.Lock()
		counted[reason]++
		mu.Unlock()
	}})
	now := time.Unix(1_700_000_000, 0)
	a.now = func() time.Time { return now }
	r := httptest.NewRequest("POST", "/v1/fetch/x", nil)

	for range 100 {
		a.Refuse(r, nil, "fetch", ReasonUntrusted)
	}
	if got := strings.Count(logs.String(), "msg=refused"); got != refusalLogsPerSecond {
		t.Fatalf("logged %d refusal lines for a burst of 100; want %d", got, refusalLogsPerSecond)
	}
	if strings.Contains(logs.String(), "refusals not logged") {
		t.Fatal("reported dropped lines before logging resumed")
	}
	if counted[ReasonUntrusted] != 100 {
		t.Fatalf("OnRefusal counted %d; want 100", counted[ReasonUntrusted])
	}

	// Half a second refills half the bucket: the first line after the pause reports the 80
	// dropped ones, once.
	now = now.Add(500 * time.Millisecond)
	for range 10 {
		a.Refuse(r, nil, "fetch", ReasonBadToken)
	}
	out := logs.String()
	if !strings.Contains(out, `level=WARN msg="refusals not logged" count=80`) {
		t.Fatalf("no summary of the dropped lines:\n%s", out)
	}
	if got := strings.Count(out, "refusals not logged"); got != 1 {
		t.Fatalf("%d summary lines; want 1", got)
	}
	if got := strings.Count(out, "msg=refused"); got != 30 {
		t.Fatalf("%d refusal lines; want 30", got)
	}
	if !strings.Contains(out, `level=WARN msg=refused audit=fetch remote=192.0.2.1:1234 token=anonymous result="refused: bad_token"`) {
		t.Fatalf("refusal line not as expected:\n%s", out)
	}

	// A refusal outside HTTP (a peer) names the connection's address.
	now = now.Add(time.Second)
	a.RefuseFrom("192.0.2.9:5555", nil, "raft connect", ReasonPeer)
	if !strings.Contains(logs.String(), `audit="raft connect" remote=192.0.2.9:5555 token=anonymous result="refused: peer"`) {
		t.Fatalf("peer refusal not logged:\n%s", logs.String())
	}
}

// A grant captured when an agent connected is checked again against the tokens in force.
func TestCurrentAgent_FollowsReloads(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(file, []byte("pay agent pay-token-0123456789abcdef payments-*\n"), 0o600)
	a, err := New(Config{TokenFile: file})
	if err != nil {
		t.Fatal(err)
	}
	g, ok := a.Lookup("pay-token-0123456789abcdef")
	if !ok {
		t.Fatal("token not found")
	}
	if cur, ok := a.CurrentAgent(g); !ok || cur.Name != "pay" {
		t.Fatalf("before a reload: %+v %v", cur, ok)
	}
	if _, ok := a.CurrentAgent(nil); ok {
		t.Fatal("a connection without a token passes while agent tokens are required")
	}
	// Same token, narrower patterns: the new grant applies.
	os.WriteFile(file, []byte("pay agent pay-token-0123456789abcdef payments-eu\n"), 0o600)
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if cur, ok := a.CurrentAgent(g); !ok || cur.AllowsNamespace("payments-us") || !cur.AllowsNamespace("payments-eu") {
		t.Fatalf("after narrowing: %+v %v", cur, ok)
	}
	// Token gone: refused.
	os.WriteFile(file, []byte("ops admin ops-token-0123456789abcdef\n"), 0o600)
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.CurrentAgent(g); ok {
		t.Fatal("a removed token still passes")
	}
	if _, ok := a.CurrentAgent(nil); !ok {
		t.Fatal("with no agent tokens left, connections without one must pass")
	}
}
