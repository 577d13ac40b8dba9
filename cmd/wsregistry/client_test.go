package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/auth"
	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/registry"
	"github.com/wsregistry/wsregistry/wsserver"
)

// startTestNode runs a one-node registry in this process with an echo agent registered
// as "svc".
func startTestNode(t *testing.T, adminToken string) *registry.Node {
	t.Helper()
	ln := func() net.Listener {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	ws, api, rl := ln(), ln(), ln()
	n, err := registry.Start(registry.Config{
		NodeID: "n1", DataDir: t.TempDir(), WSListener: ws, HTTPListener: api, RaftListener: rl,
		WSAdvertise: ws.Addr().String(), HTTPAdvertise: api.Addr().String(), RaftAdvertise: rl.Addr().String(),
		Cluster: cluster.Config{HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond},
		Auth:    auth.Config{AdminToken: adminToken},
		Logger:  slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	eventually(t, 10*time.Second, func() bool { ok, _ := n.Ready(); return ok }, "node not ready")
	a, err := wsserver.NewAgent(wsserver.AgentConfig{Registry: n.WSAddr(), Listen: "127.0.0.1:0", Advertise: "127.0.0.1", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	a.Handle("ws", "/echo", func(_ context.Context, _ *wsserver.Channel, props json.RawMessage) (json.RawMessage, error) {
		return props, nil
	})
	if err := a.Online(context.Background(), "svc"); err != nil {
		t.Fatal(err)
	}
	return n
}

func runCLI(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCLI_FetchPrintsResultAndFailsClearly(t *testing.T) {
	n := startTestNode(t, "")
	code, out, errOut := runCLI("fetch", "svc/echo", `[1,"a"]`, "--timeout", "2s", "--addr", n.HTTPAddr())
	var got any
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || !strings.Contains(strings.Join(strings.Fields(out), ""), `[1,"a"]`) {
		t.Fatalf("fetch: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	code, _, errOut = runCLI("fetch", "nobody/echo", "--addr", n.HTTPAddr())
	if code == 0 || !strings.Contains(errOut, "404") || !strings.Contains(errOut, "Cannot find the namepsace of nobody from registry") {
		t.Fatalf("unknown namespace: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = runCLI("fetch", "svc/echo", "not json", "--addr", n.HTTPAddr())
	if code == 0 || !strings.Contains(errOut, "400") || !strings.Contains(errOut, "JSON array") {
		t.Fatalf("bad props: exit %d, stderr %q", code, errOut)
	}
}

func TestCLI_ReadCommandsTablesAndJSON(t *testing.T) {
	n := startTestNode(t, "")
	addr := n.HTTPAddr()
	if code, out, errOut := runCLI("where", "svc", "--addr", addr); code != 0 || !strings.HasPrefix(out, "127.0.0.1:") {
		t.Fatalf("where: %d %q %q", code, out, errOut)
	}
	if code, out, _ := runCLI("list", "--addr", addr); code != 0 || !strings.Contains(out, "NAMESPACE") || !strings.Contains(out, "svc") {
		t.Fatalf("list: %d %q", code, out)
	}
	code, out, _ := runCLI("list", "--json", "--addr", addr)
	var list []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0]["name"] != "svc" {
		t.Fatalf("list --json: %d %q", code, out)
	}
	if code, out, _ := runCLI("members", "--addr", addr); code != 0 || !strings.Contains(out, "leader") || !strings.Contains(out, "n1") {
		t.Fatalf("members: %d %q", code, out)
	}
	if code, out, errOut := runCLI("healthcheck", "--addr", addr); code != 0 || !strings.Contains(out, "ready") {
		t.Fatalf("healthcheck: %d %q %q", code, out, errOut)
	}
	if code, _, errOut := runCLI("where", "nobody", "--addr", addr); code != 1 || !strings.Contains(errOut, "404") {
		t.Fatalf("where unknown: %d %q", code, errOut)
	}
}

func TestCLI_NodeDownAndWrongTokenAreClearErrors(t *testing.T) {
	n := startTestNode(t, "s3cret")
	code, _, errOut := runCLI("healthcheck", "--addr", "127.0.0.1:1", "--timeout", "2s")
	if code == 0 || !strings.Contains(errOut, "not reachable") {
		t.Fatalf("node down: %d %q", code, errOut)
	}
	code, _, errOut = runCLI("remove", "ghost", "--addr", n.HTTPAddr(), "--admin-token", "wrong")
	if code == 0 || !strings.Contains(errOut, "401") || !strings.Contains(errOut, "--admin-token") || strings.Contains(errOut, "s3cret") {
		t.Fatalf("wrong token: %d %q", code, errOut)
	}
	code, _, errOut = runCLI("remove", "ghost", "--addr", n.HTTPAddr(), "--admin-token", "s3cret")
	if code == 0 || !strings.Contains(errOut, "no member with id ghost") {
		t.Fatalf("remove unknown with the right token: %d %q", code, errOut)
	}
}

func TestCLI_SnapshotSaveRestoreAndWatchErrors(t *testing.T) {
	n := startTestNode(t, "adm")
	file := t.TempDir() + "/state.snap"
	code, out, errOut := runCLI("snapshot", "save", file, "--addr", n.HTTPAddr(), "--admin-token", "adm")
	if code != 0 || !strings.Contains(out, "saved") {
		t.Fatalf("save: %d %q %q", code, out, errOut)
	}
	code, out, errOut = runCLI("snapshot", "restore", file, "--addr", n.HTTPAddr(), "--admin-token", "adm")
	if code != 0 || !strings.Contains(out, "restored") {
		t.Fatalf("restore: %d %q %q", code, out, errOut)
	}
	code, _, errOut = runCLI("snapshot", "save", file, "--addr", n.HTTPAddr())
	if code == 0 || !strings.Contains(errOut, "401") {
		t.Fatalf("save without token: %d %q", code, errOut)
	}
	bad := t.TempDir() + "/bad.snap"
	os.WriteFile(bad, []byte("garbage"), 0o600)
	code, _, errOut = runCLI("snapshot", "restore", bad, "--addr", n.HTTPAddr(), "--admin-token", "adm")
	if code == 0 || !strings.Contains(errOut, "not a snapshot") {
		t.Fatalf("restore garbage: %d %q", code, errOut)
	}
}

func TestPrintSSE_EventsAndHeartbeats(t *testing.T) {
	in := ": heartbeat\n\nid: 7\nevent: register\ndata: {\"ns\":\"a\"}\n\ndata: plain\n\n"
	var out bytes.Buffer
	printSSE(strings.NewReader(in), &out, false)
	if got := out.String(); got != "7 register {\"ns\":\"a\"}\nmessage plain\n" {
		t.Fatalf("human: %q", got)
	}
	out.Reset()
	printSSE(strings.NewReader(in), &out, true)
	if got := out.String(); got != "{\"ns\":\"a\"}\nplain\n" {
		t.Fatalf("json: %q", got)
	}
}
