package registry

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// An agent token limited to some namespaces must not gain others by replacing the
// connection of an agent that holds them (same host:port, another token), and a token the
// token file no longer holds stops registering on connections already open.
func TestOwnership_ReplacingAnotherTokensConnectionAndRevokedTokens(t *testing.T) {
	const (
		payTok  = "payments-token-0123456789abcdef"
		evilTok = "evil-token-0123456789abcdef0123"
	)
	file := filepath.Join(t.TempDir(), "tokens")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("pay agent " + payTok + " payments-*\nevil agent " + evilTok + " evil-*\n")
	n := startNode(t, t.TempDir(), func(c *Config) { c.Auth.TokenFile = file })

	victim := dialRaw(t, n, "/t/"+payTok+"/127.0.0.1/9501")
	victim.call(online(0, "payments-api"), ok(0))

	// Another token, same host:port: refused before the upgrade; the victim keeps its name.
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+n.WSAddr()+"/t/"+evilTok+"/127.0.0.1/9501", nil)
	if err == nil {
		c.CloseNow()
		t.Fatal("a connection with another agent token replaced the victim's")
	}
	if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("replacement with another token: %v, want 403", err)
	}
	victim.call(where(1, "payments-api"), found(1, "127.0.0.1:9501"))
	for _, r := range n.State().Instances("payments-api") {
		if r.Session.String() != sessionOf(n.ws.Channel("127.0.0.1:9501")).id.String() {
			t.Fatalf("payments-api moved to session %s", r.Session)
		}
	}

	// The same token may replace (an agent reconnecting), and inherits the registration.
	again := dialRaw(t, n, "/t/"+payTok+"/127.0.0.1/9501")
	again.call(online(0, "payments-api"), ok(0))

	// The token is revoked: the open connection can no longer register.
	write("evil agent " + evilTok + " evil-*\n")
	if err := n.Auth().Reload(); err != nil {
		t.Fatal(err)
	}
	again.sendText(online(1, "payments-eu"))
	if got := js(again.next()); !strings.Contains(got, `"status":401`) || !strings.Contains(got, "no longer accepted") {
		t.Fatalf("online with a revoked token: %s", got)
	}
	if _, ok := n.Where("payments-eu"); ok {
		t.Fatal("a revoked token registered a namespace")
	}
}
