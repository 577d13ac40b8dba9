package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The token file is re-read on SIGHUP: a token added there works without a restart, a
// removed one stops working, and a broken file keeps the tokens in force (and says why).
func TestProcess_TokenFileReloadsOnSIGHUP(t *testing.T) {
	const (
		oldTok = "ops-token-0123456789abcdef-old"
		newTok = "ops-token-0123456789abcdef-new"
	)
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("ops admin " + oldTok + "\n")
	_, ips := loopbackIPs(1)
	p := startNode(t, dir, ips[0], nil, "--node-id", "reload", "--data-dir", "d", "--token-file", file)
	p.waitReady(20 * time.Second)

	status := func(token string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+p.http+"/v1/snapshot", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status(oldTok); got != 200 {
		t.Fatalf("the file's token before the reload: %d", got)
	}
	if got := status(newTok); got != 401 {
		t.Fatalf("a token not yet in the file: %d", got)
	}

	write("ops admin " + newTok + "\n")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() bool { return status(newTok) == 200 && status(oldTok) == 401 },
		"after SIGHUP: new token %d, old token %d, want 200 and 401", status(newTok), status(oldTok))

	write("ops admin\n") // a line without its token
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() bool { return strings.Contains(p.log.String(), "token file not reloaded") },
		"a broken token file was not reported")
	if got := status(newTok); got != 200 {
		t.Fatalf("a broken file took the tokens in force away: %d", got)
	}
	if p.exited() {
		t.Fatalf("SIGHUP stopped the node: %v", p.err)
	}
	for _, tok := range []string{oldTok, newTok} {
		if strings.Contains(p.log.String(), tok) {
			t.Fatal("a token appears in the log")
		}
	}
}
