package wsserver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/wsregistry/wsregistry/internal/testutil"
)

func TestParseRegistryAddr(t *testing.T) {
	for _, tc := range []struct {
		in         string
		defaultTLS bool
		want       registryAddr
	}{
		{"10.0.0.1:9001", false, registryAddr{target: "10.0.0.1:9001"}},
		{"10.0.0.1:9001", true, registryAddr{target: "10.0.0.1:9001", tls: true}},
		{"reg.example:9001/t/abc/", false, registryAddr{target: "reg.example:9001", prefix: "/t/abc"}},
		{"ws://10.0.0.1:9001/t/abc", true, registryAddr{target: "10.0.0.1:9001", prefix: "/t/abc"}},
		{"wss://10.0.0.1:9001", false, registryAddr{target: "10.0.0.1:9001", tls: true}},
	} {
		got, err := parseRegistryAddr(tc.in, tc.defaultTLS)
		if err != nil || got != tc.want {
			t.Errorf("parseRegistryAddr(%q, %v) = %+v, %v; want %+v", tc.in, tc.defaultTLS, got, err, tc.want)
		}
	}
	for _, bad := range []string{"http://10.0.0.1:9001", "ws://", "/t/abc"} {
		if _, err := parseRegistryAddr(bad, false); err == nil {
			t.Errorf("parseRegistryAddr(%q) accepted", bad)
		}
	}
	if _, err := NewAgent(AgentConfig{Registries: []string{"10.0.0.1:1", "https://10.0.0.2:2"}}); err == nil {
		t.Error("NewAgent accepted an https:// registry address")
	}
}

func TestParseRegistries_ShufflesOnce(t *testing.T) {
	var in []string
	for i := 1; i <= 8; i++ {
		in = append(in, fmt.Sprintf("10.0.0.%d:1", i))
	}
	targets := func(regs []registryAddr) []string {
		var s []string
		for _, r := range regs {
			s = append(s, r.target)
		}
		return s
	}
	kept, err := parseRegistries(AgentConfig{Registries: in, noShuffle: true})
	if err != nil || !reflect.DeepEqual(targets(kept), in) {
		t.Fatalf("noShuffle: %v %v", targets(kept), err)
	}
	// 8! orders: the same order 50 times in a row means no shuffling.
	for i := 0; ; i++ {
		regs, err := parseRegistries(AgentConfig{Registries: in})
		if err != nil {
			t.Fatal(err)
		}
		got := targets(regs)
		if !reflect.DeepEqual(got, in) {
			if sorted := slices.Sorted(slices.Values(got)); !reflect.DeepEqual(sorted, in) {
				t.Fatalf("shuffled list %v is not a permutation of %v", got, in)
			}
			return
		}
		if i == 50 {
			t.Fatal("registry addresses never shuffled")
		}
	}
}

// deadAddr is a "host:port" where nothing listens.
func deadAddr(t testing.TB) string {
	ln := listen(t)
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func newTestAgent(t testing.TB, cfg AgentConfig) *Agent {
	t.Helper()
	cfg.Listen, cfg.Advertise, cfg.noShuffle = "127.0.0.1:0", "127.0.0.1", true
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	a, err := NewAgent(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// recvOnlines waits for n onlines on reg and returns their namespaces.
func recvOnlines(t testing.TB, reg *standIn, n int, d time.Duration, what string) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		seen[recv(t, reg.onlines, d, what)[0]] = true
	}
	return seen
}

func TestAgent_SkipsDeadRegistryAddress(t *testing.T) {
	ln := listen(t)
	reg := newStandIn()
	serveOn(t, ln, reg)
	dead := deadAddr(t)
	a := newTestAgent(t, AgentConfig{Registries: []string{dead, ln.Addr().String()}})
	if err := a.Online(context.Background(), "svc-a"); err != nil {
		t.Fatalf("Online with the first address dead: %v", err)
	}
	if o := recv(t, reg.onlines, 5*time.Second, "online"); o != [2]string{"svc-a", a.Addr()} {
		t.Fatalf("online %v", o)
	}
	if a.Connects() != 1 {
		t.Fatalf("connects %d", a.Connects())
	}

	b := newTestAgent(t, AgentConfig{Registries: []string{dead, deadAddr(t)}})
	err := b.Online(context.Background(), "svc-b")
	if err == nil || strings.Count(err.Error(), "wsserver: dial") != 2 {
		t.Fatalf("Online with every address dead: %v, want both dial errors", err)
	}
}

func TestAgent_FailsOverAtOnceAndReRegisters(t *testing.T) {
	// A keeps accepting after it drops the agent: the agent must move on to B rather
	// than come back to A.
	var dialsA atomic.Int32
	regA, regB := newStandIn(), newStandIn()
	sA, addrA := startServerWrapped(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: regA.mux()}}, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { dialsA.Add(1); next.ServeHTTP(w, r) })
	})
	lnB := listen(t)
	serveOn(t, lnB, regB)
	// A backoff far longer than the wait below: failing over must not wait for it.
	a := newTestAgent(t, AgentConfig{Registries: []string{addrA, lnB.Addr().String()},
		ReconnectMin: time.Minute, ReconnectMax: 2 * time.Minute})
	if err := a.Online(context.Background(), "svc-a", "svc-b"); err != nil {
		t.Fatal(err)
	}
	if seen := recvOnlines(t, regA, 2, 5*time.Second, "online on A"); !seen["svc-a"] || !seen["svc-b"] {
		t.Fatalf("onlines on A %v", seen)
	}

	sA.CloseAll(websocket.StatusGoingAway, ReasonGoingAway)
	if seen := recvOnlines(t, regB, 2, 3*time.Second, "online on B after A closed"); !seen["svc-a"] || !seen["svc-b"] {
		t.Fatalf("onlines on B %v", seen)
	}
	eventually(t, 5*time.Second, "second connect counted", func() bool { return a.Connects() == 2 })
	if addr, found, err := a.Where(context.Background(), "svc-b"); err != nil || !found || addr != a.Addr() {
		t.Fatalf("Where through B: %q %v %v", addr, found, err)
	}
	if k := a.Registry().Key(); k != lnB.Addr().String() {
		t.Fatalf("registry channel to %s, want B %s", k, lnB.Addr())
	}
	if n := dialsA.Load(); n != 1 {
		t.Fatalf("%d dials to A, want 1: after A dropped it the agent should try B first", n)
	}
}

// startServerWrapped is startServer with wrap in front of the Server.
func startServerWrapped(t testing.TB, cfg ServerConfig, wrap func(http.Handler) http.Handler) (*Server, string) {
	t.Helper()
	cfg.Logger = testLogger(t)
	s := NewServer(cfg)
	ts := httptest.NewServer(wrap(s))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
		defer cancel()
		s.Shutdown(ctx)
		ts.Close()
	})
	return s, strings.TrimPrefix(ts.URL, "http://")
}

func TestAgent_RoundRobinComesBackToFirstRegistry(t *testing.T) {
	lnA := listen(t)
	addrA := lnA.Addr().String()
	regA := newStandIn()
	stopA := serveOn(t, lnA, regA)
	a := newTestAgent(t, AgentConfig{Registries: []string{addrA, deadAddr(t)},
		ReconnectMin: 10 * time.Millisecond, ReconnectMax: 100 * time.Millisecond})
	if err := a.Online(context.Background(), "svc"); err != nil {
		t.Fatal(err)
	}
	recv(t, regA.onlines, 5*time.Second, "online on A")

	// A goes away, the other address is dead: the agent keeps going round both.
	stopA()
	eventually(t, 5*time.Second, "agent to notice the loss", func() bool { return a.Registry() == nil })
	ln2, err := net.Listen("tcp", addrA)
	if err != nil {
		t.Fatal(err)
	}
	regA2 := newStandIn()
	serveOn(t, ln2, regA2)
	if o := recv(t, regA2.onlines, 5*time.Second, "online on restarted A"); o[0] != "svc" {
		t.Fatalf("online %v", o)
	}
}

func TestAgent_RegistersOverWSSWithToken(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	seen := make(chan seenReq, 4)
	reg := newStandIn()
	// TLS only: a plain dial would be refused.
	_, addr := startSniffServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: reg.mux()}}, recordTLS(seen), srvTLS, false, time.Second)
	const token = "s3cret-token-value"
	var logs testutil.LogBuffer
	a := newTestAgent(t, AgentConfig{
		Registries: []string{deadAddr(t), addr}, // no scheme: wss, as TLS is set
		TLS:        cliTLS,
		Token:      token,
		Logger:     slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err := a.Online(context.Background(), "secure-svc"); err != nil {
		t.Fatal(err)
	}
	if o := recv(t, reg.onlines, 5*time.Second, "online"); o != [2]string{"secure-svc", a.Addr()} {
		t.Fatalf("online %v", o)
	}
	r := recv(t, seen, 5*time.Second, "request")
	if !r.tls || r.auth != "Bearer "+token || r.key != a.Addr() {
		t.Fatalf("registry saw %+v, want TLS with the bearer token", r)
	}
	if strings.Contains(logs.String(), token) {
		t.Fatalf("token in the logs:\n%s", logs.String())
	}
}

func TestAgent_ExplicitWSSchemeDialsPlainEvenWithTLS(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	seen := make(chan seenReq, 4)
	reg := newStandIn()
	_, addr := startSniffServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: reg.mux()}}, recordTLS(seen), srvTLS, true, time.Second)
	a := newTestAgent(t, AgentConfig{Registry: "ws://" + addr, TLS: cliTLS})
	if err := a.Online(context.Background(), "svc"); err != nil {
		t.Fatal(err)
	}
	if r := recv(t, seen, 5*time.Second, "request"); r.tls || r.auth != "" {
		t.Fatalf("registry saw %+v, want plain ws:// without a token", r)
	}
}

// A registry address that accepts TCP but never answers the upgrade (a paused node) costs a
// failover DefaultRegistryDialTimeout, not DefaultDialTimeout.
func TestAgent_StalledRegistryAddressDoesNotHoldFailover(t *testing.T) {
	stalled := listen(t) // never accepted: the kernel completes the handshake, nobody answers
	ln := listen(t)
	reg := newStandIn()
	serveOn(t, ln, reg)
	a := newTestAgent(t, AgentConfig{Registries: []string{stalled.Addr().String(), ln.Addr().String()}})
	start := time.Now()
	if err := a.Online(context.Background(), "svc"); err != nil {
		t.Fatalf("Online with the first address stalled: %v", err)
	}
	took := time.Since(start)
	t.Logf("registered through the second address %v after starting with a stalled one", took.Round(time.Millisecond))
	if took < DefaultRegistryDialTimeout/2 || took >= DefaultDialTimeout {
		t.Fatalf("took %v: want about DefaultRegistryDialTimeout (%v)", took, DefaultRegistryDialTimeout)
	}
}

// TestAgent_RefusedReconnectKeepsItsPace: a node that drains answers 503. Behind one
// load-balancing address the next try may reach another node, so the agent tries again at
// its current pace instead of doubling the backoff at every refusal.
func TestAgent_RefusedReconnectKeepsItsPace(t *testing.T) {
	var refuse, refusals atomic.Int32
	reg := newStandIn()
	s, addr := startServerWrapped(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: reg.mux()}}, func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if refuse.Load() > 0 {
				refuse.Add(-1)
				refusals.Add(1)
				http.Error(w, "this registry node is draining", http.StatusServiceUnavailable)
				return
			}
			next.ServeHTTP(w, r)
		})
	})
	a := newTestAgent(t, AgentConfig{Registries: []string{addr}, ReconnectMin: 100 * time.Millisecond, ReconnectMax: 5 * time.Second})
	if err := a.Online(context.Background(), "svc"); err != nil {
		t.Fatal(err)
	}
	recv(t, reg.onlines, 5*time.Second, "online")

	refuse.Store(8)
	s.CloseAll(websocket.StatusServiceRestart, "draining")
	// At most 9 waits of 100-200 ms now; doubling at each refusal they would add up to more
	// than 12 s (0.1+0.2+0.4+0.8+1.6+2.5+2.5+2.5+2.5 at the least).
	recv(t, reg.onlines, scaled(4*time.Second), "online again after eight refusals")
	if n := refusals.Load(); n != 8 {
		t.Fatalf("%d refusals, want 8", n)
	}
}
