package auth

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

const (
	loopback = "127.0.0.1:40000"
	remote   = "192.0.2.1:40000"
)

// refusals records OnRefusal calls.
type refusals struct {
	mu      sync.Mutex
	reasons []string
}

func (r *refusals) add(reason string) {
	r.mu.Lock()
	r.reasons = append(r.reasons, reason)
	r.mu.Unlock()
}

func (r *refusals) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.reasons
	r.reasons = nil
	return out
}

// wantFlags is what each scope's refusal messages must name, as the brief words it.
func wantFlags(s Scope) string {
	return map[Scope]string{
		ScopeAdmin: "--admin-token or --token-file",
		ScopeFetch: "--token-file (scope fetch) or --admin-token",
		ScopeRead:  "--token-file (scope read)",
	}[s]
}

func TestRequire_Rules(t *testing.T) {
	type setup struct {
		cfg  Config
		file string
	}
	open := setup{}
	adminOnly := setup{cfg: Config{AdminToken: adminTok}}
	full := setup{cfg: Config{AdminToken: adminTok, AgentToken: agentTok},
		file: "grafana read " + readTok + "\nci fetch " + fetchTok + "\npay agent " + payTok + " payments-*\n"}
	fetchOnly := setup{file: "ci fetch " + fetchTok + "\n"}

	for _, tc := range []struct {
		name       string
		setup      setup
		scope      Scope
		remote     string
		bearer     string // sent as Authorization: Bearer
		query      string // sent as ?token=
		wantStatus int
		wantReason string // "" when allowed
		wantGrant  string // grant name the handler sees; "" for none
	}{
		{"open: read from anywhere", open, ScopeRead, remote, "", "", 200, "", ""},
		{"open: fetch from loopback", open, ScopeFetch, loopback, "", "", 200, "", "trusted-network"},
		{"open: admin from ::1", open, ScopeAdmin, "[::1]:40000", "", "", 200, "", "trusted-network"},
		{"open: admin from outside", open, ScopeAdmin, remote, "", "", 403, ReasonUntrusted, ""},
		{"open: fetch from outside", open, ScopeFetch, remote, "", "", 403, ReasonUntrusted, ""},
		{"open: unknown token even from loopback", open, ScopeAdmin, loopback, wrongTok, "", 401, ReasonBadToken, ""},
		{"open: unknown token on a read", open, ScopeRead, remote, "", wrongTok, 401, ReasonBadToken, ""},

		{"admin flag: admin without token from loopback", adminOnly, ScopeAdmin, loopback, "", "", 401, ReasonNoToken, ""},
		{"admin flag: fetch without token from loopback", adminOnly, ScopeFetch, loopback, "", "", 401, ReasonNoToken, ""},
		{"admin flag: reads stay open", adminOnly, ScopeRead, remote, "", "", 200, "", ""},
		{"admin flag: admin with bearer", adminOnly, ScopeAdmin, remote, adminTok, "", 200, "", "admin-token"},
		{"admin flag: admin implies fetch", adminOnly, ScopeFetch, remote, "", adminTok, 200, "", "admin-token"},
		{"admin flag: admin implies read", adminOnly, ScopeRead, remote, adminTok, "", 200, "", "admin-token"},
		{"admin flag: wrong token", adminOnly, ScopeAdmin, remote, wrongTok, "", 401, ReasonBadToken, ""},

		{"read token: read without token from loopback", full, ScopeRead, loopback, "", "", 401, ReasonNoToken, ""},
		{"read token: read with it", full, ScopeRead, remote, readTok, "", 200, "", "grafana"},
		{"read token: cannot fetch", full, ScopeFetch, remote, readTok, "", 403, ReasonScope, ""},
		{"fetch token: cannot admin", full, ScopeAdmin, remote, fetchTok, "", 403, ReasonScope, ""},
		{"fetch token: fetches", full, ScopeFetch, remote, "", fetchTok, 200, "", "ci"},
		{"agent token: cannot read", full, ScopeRead, remote, payTok, "", 403, ReasonScope, ""},
		{"agent flag token: cannot admin", full, ScopeAdmin, loopback, agentTok, "", 403, ReasonScope, ""},
		{"admin token: reads when read is closed", full, ScopeRead, remote, adminTok, "", 200, "", "admin-token"},

		{"fetch only: admin from loopback", fetchOnly, ScopeAdmin, loopback, "", "", 200, "", "trusted-network"},
		{"fetch only: admin from outside", fetchOnly, ScopeAdmin, remote, "", "", 403, ReasonUntrusted, ""},
		{"fetch only: fetch without token", fetchOnly, ScopeFetch, loopback, "", "", 401, ReasonNoToken, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs logBuffer
			var refused refusals
			cfg := tc.setup.cfg
			cfg.Logger, cfg.OnRefusal = logs.logger(), refused.add
			if tc.setup.file != "" {
				cfg.TokenFile = writeTokenFile(t, tc.setup.file)
			}
			a := mustNew(t, cfg)
			ran, sawGrant := false, ""
			h := a.Require(tc.scope, "do-it", func(w http.ResponseWriter, r *http.Request) {
				ran = true
				if g := GrantFrom(r.Context()); g != nil {
					sawGrant = g.Name
				}
			})
			target := "/v1/x"
			if tc.query != "" {
				target += "?token=" + tc.query
			}
			r := httptest.NewRequest("POST", target, nil)
			r.RemoteAddr = tc.remote
			if tc.bearer != "" {
				r.Header.Set("Authorization", "Bearer "+tc.bearer)
			}
			w := httptest.NewRecorder()
			h(w, r)

			if w.Code != tc.wantStatus {
				t.Fatalf("status %d; want %d (body %s)", w.Code, tc.wantStatus, w.Body)
			}
			if got := refused.take(); tc.wantReason == "" && len(got) != 0 || tc.wantReason != "" && (len(got) != 1 || got[0] != tc.wantReason) {
				t.Errorf("OnRefusal got %v; want %q", got, tc.wantReason)
			}
			assertNoSecret(t, "body", w.Body.String())
			assertNoSecret(t, "log", logs.String())
			if tc.wantReason == "" {
				if !ran || sawGrant != tc.wantGrant {
					t.Fatalf("handler ran %v with grant %q; want grant %q", ran, sawGrant, tc.wantGrant)
				}
				return
			}
			if ran {
				t.Fatal("handler ran on a refusal")
			}
			if ct := w.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if got := w.Header().Get("WWW-Authenticate"); (w.Code == 401) != (got != "") {
				t.Errorf("WWW-Authenticate %q on a %d", got, w.Code)
			}
			var body struct {
				Status  int    `json:"status"`
				Message string `json:"message"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q is not JSON: %v", w.Body, err)
			}
			if body.Status != tc.wantStatus {
				t.Errorf("body status %d; want %d", body.Status, tc.wantStatus)
			}
			if !strings.Contains(body.Message, wantFlags(tc.scope)) || !strings.Contains(body.Message, "do-it") {
				t.Errorf("message %q does not name %q and the operation", body.Message, wantFlags(tc.scope))
			}
			if tc.wantReason == ReasonUntrusted && (!strings.Contains(body.Message, "accepted only from --trusted-networks") || !strings.Contains(body.Message, "192.0.2.1")) {
				t.Errorf("untrusted message %q does not explain --trusted-networks and show the caller", body.Message)
			}
			if tc.wantReason == ReasonScope && !strings.Contains(body.Message, "does not have scope "+tc.scope.String()) {
				t.Errorf("scope message %q does not name the scope", body.Message)
			}
			if !strings.Contains(logs.String(), `msg=refused audit=do-it remote=`+tc.remote) ||
				!strings.Contains(logs.String(), `result="refused: `+tc.wantReason+`"`) {
				t.Errorf("refusal not audited:\n%s", logs.String())
			}
		})
	}
}

func TestRequire_HandlerNeverSeesTheCredential(t *testing.T) {
	a := mustNew(t, Config{AdminToken: adminTok})
	var seenURL, seenAuth string
	h := a.Require(ScopeAdmin, "join", func(w http.ResponseWriter, r *http.Request) {
		seenURL, seenAuth = r.URL.String(), r.Header.Get("Authorization")
	})
	for _, tc := range []struct {
		target, bearer string
	}{
		{"/v1/join?id=n2&token=" + adminTok, ""},
		{"/v1/join?id=n2", adminTok},
	} {
		r := httptest.NewRequest("POST", tc.target, nil)
		if tc.bearer != "" {
			r.Header.Set("Authorization", "Bearer "+tc.bearer)
		}
		w := httptest.NewRecorder()
		h(w, r)
		if w.Code != 200 {
			t.Fatalf("status %d: %s", w.Code, w.Body)
		}
		if seenURL != "/v1/join?id=n2" || seenAuth != "" {
			t.Errorf("handler saw URL %q, Authorization %q", seenURL, seenAuth)
		}
	}
}

func TestTokenFrom_HeaderThenQuery(t *testing.T) {
	for _, tc := range []struct {
		auth, target, want string
	}{
		{"Bearer abc", "/", "abc"},
		{"bearer  abc ", "/", "abc"},
		{"BEARER abc", "/?token=q", "abc"},
		{"Basic dXNlcjpwYXNz", "/?token=q", "q"},
		{"Bearer ", "/?token=q", "q"},
		{"", "/?token=q", "q"},
		{"", "/", ""},
	} {
		r := httptest.NewRequest("GET", tc.target, nil)
		if tc.auth != "" {
			r.Header.Set("Authorization", tc.auth)
		}
		if got := TokenFrom(r); got != tc.want {
			t.Errorf("TokenFrom(Authorization %q, %s) = %q; want %q", tc.auth, tc.target, got, tc.want)
		}
	}
}

// TestRequire_RealServerTellsLoopbackFromOutside runs the middleware behind a real listener,
// so RemoteAddr is what net/http sets.
func TestRequire_RealServerTellsLoopbackFromOutside(t *testing.T) {
	for _, tc := range []struct {
		name     string
		networks []netip.Prefix
		want     int
	}{
		{"loopback is trusted by default", nil, 200},
		{"loopback outside the configured networks", []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := mustNew(t, Config{TrustedNetworks: tc.networks})
			mux := http.NewServeMux()
			mux.HandleFunc("POST /v1/snapshot", a.Require(ScopeAdmin, "snapshot", func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, GrantFrom(r.Context()).Name)
			}))
			srv := httptest.NewServer(mux)
			t.Cleanup(srv.Close)
			resp, err := http.Post(srv.URL+"/v1/snapshot", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d; want %d: %s", resp.StatusCode, tc.want, body)
			}
			if tc.want == 200 && string(body) != "trusted-network" {
				t.Errorf("grant %q; want trusted-network", body)
			}
			if tc.want == 403 && !strings.Contains(string(body), "came from 127.0.0.1") {
				t.Errorf("refusal does not show the caller: %s", body)
			}
		})
	}
}

func TestAgent_TokenFormsAndNamespaces(t *testing.T) {
	var logs logBuffer
	var refused refusals
	a := mustNew(t, Config{
		AgentToken: agentTok,
		TokenFile:  writeTokenFile(t, "ci admin "+adminTok+"\npay agent "+payTok+" payments-*,billing\n"),
		Logger:     logs.logger(),
		OnRefusal:  refused.add,
	})
	for _, tc := range []struct {
		name       string
		target     string
		bearer     string
		wantGrant  string
		wantPath   string
		wantStatus int
		wantReason string
	}{
		{"path prefix", "/t/" + agentTok + "/10.0.0.1/8080", "", "agent-token", "/10.0.0.1/8080", 0, ""},
		{"bearer", "/10.0.0.1/8080", agentTok, "agent-token", "/10.0.0.1/8080", 0, ""},
		{"query", "/10.0.0.1/8080?token=" + payTok, "", "pay", "/10.0.0.1/8080", 0, ""},
		{"prefix wins over query", "/t/" + payTok + "/h/1?token=" + wrongTok, "", "pay", "/h/1", 0, ""},
		{"host named t is not a prefix", "/t/8080", agentTok, "agent-token", "/t/8080", 0, ""},
		{"no token", "/10.0.0.1/8080", "", "", "/10.0.0.1/8080", 401, ReasonNoToken},
		{"empty prefix token", "/t//10.0.0.1/8080", "", "", "/10.0.0.1/8080", 401, ReasonNoToken},
		{"wrong prefix token", "/t/" + wrongTok + "/10.0.0.1/8080", "", "", "/10.0.0.1/8080", 401, ReasonBadToken},
		{"wrong bearer", "/10.0.0.1/8080", wrongTok, "", "/10.0.0.1/8080", 401, ReasonBadToken},
		{"admin token is not an agent token", "/t/" + adminTok + "/10.0.0.1/8080", "", "", "/10.0.0.1/8080", 403, ReasonScope},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tc.target, nil)
			r.RemoteAddr = remote
			if tc.bearer != "" {
				r.Header.Set("Authorization", "Bearer "+tc.bearer)
			}
			g, path, status, msg := a.Agent(r)
			gotGrant := ""
			if g != nil {
				gotGrant = g.Name
			}
			if path != tc.wantPath || status != tc.wantStatus || gotGrant != tc.wantGrant {
				t.Fatalf("Agent = %+v, %q, %d, %q; want grant %q path %q status %d", g, path, status, msg, tc.wantGrant, tc.wantPath, tc.wantStatus)
			}
			got := refused.take()
			if tc.wantReason == "" {
				if len(got) != 0 || msg != "" {
					t.Fatalf("refusals %v, msg %q on success", got, msg)
				}
				return
			}
			if len(got) != 1 || got[0] != tc.wantReason {
				t.Errorf("OnRefusal got %v; want %q", got, tc.wantReason)
			}
			for _, want := range []string{"host:port/t/<token>", "Authorization: Bearer", "?token="} {
				if !strings.Contains(msg, want) {
					t.Errorf("message %q does not explain %q", msg, want)
				}
			}
			assertNoSecret(t, "message", msg)
		})
	}

	// Namespace patterns of the grant; the caller refuses through Refuse.
	g, _ := a.Lookup(payTok)
	for ns, want := range map[string]bool{"payments-api": true, "billing": true, "orders": false, "billing-x": false} {
		if g.AllowsNamespace(ns) != want {
			t.Errorf("pay.AllowsNamespace(%q) = %v; want %v", ns, !want, want)
		}
	}
	r := httptest.NewRequest("GET", "/t/"+payTok+"/10.0.0.1/8080", nil)
	a.Refuse(r, g, "register orders", ReasonNamespace)
	if got := refused.take(); len(got) != 1 || got[0] != ReasonNamespace {
		t.Errorf("OnRefusal got %v", got)
	}
	if !strings.Contains(logs.String(), `audit="register orders" remote=192.0.2.1:1234 token=pay result="refused: namespace"`) {
		t.Errorf("namespace refusal not audited:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), `audit="agent connect" remote=192.0.2.1:40000 token=ci result="refused: scope"`) {
		t.Errorf("agent refusal not audited with the grant name:\n%s", logs.String())
	}
	assertNoSecret(t, "log", logs.String())
}

func TestAgent_OpenWithoutAgentGrants(t *testing.T) {
	// An admin token does not close the agent port: only agent grants do. A token prefix is
	// stripped all the same, so agents can carry their tokens before tokens are required.
	a := mustNew(t, Config{AdminToken: adminTok})
	for _, target := range []string{"/10.0.0.1/8080", "/t/" + wrongTok + "/10.0.0.1/8080"} {
		r := httptest.NewRequest("GET", target, nil)
		g, path, status, msg := a.Agent(r)
		if g != nil || path != "/10.0.0.1/8080" || status != 0 || msg != "" {
			t.Errorf("Agent(%s) = %+v, %q, %d, %q; want nil, /10.0.0.1/8080, 0, \"\"", target, g, path, status, msg)
		}
	}
}
