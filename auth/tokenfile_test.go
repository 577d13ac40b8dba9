package auth

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestTokenFile_ParsesGrants(t *testing.T) {
	file := writeTokenFile(t, "\xef\xbb\xbf# operators\n"+
		"ci      admin        "+adminTok+"\r\n"+
		"\n"+
		"   # indented comment\n"+
		"grafana read,fetch   "+readTok+"\n"+
		"pay     agent        "+payTok+"   payments-*,billing\n"+
		"hash    fetch        abc#def-0123456789xyz\n")
	a := mustNew(t, Config{TokenFile: file})
	for _, tc := range []struct {
		tok  string
		want Grant
	}{
		{adminTok, Grant{Name: "ci", Scopes: ScopeAdmin}},
		{readTok, Grant{Name: "grafana", Scopes: ScopeRead | ScopeFetch}},
		{payTok, Grant{Name: "pay", Scopes: ScopeAgent, Namespaces: []string{"payments-*", "billing"}}},
		{"abc#def-0123456789xyz", Grant{Name: "hash", Scopes: ScopeFetch}},
	} {
		g, ok := a.Lookup(tc.tok)
		if !ok {
			t.Errorf("Lookup(%q): not found", tc.tok)
			continue
		}
		got := *g
		got.digest = [32]byte{} // how CurrentAgent finds it again; not part of what is granted
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Lookup(%q) = %v %v %v; want %+v", tc.tok, got.Name, got.Scopes, got.Namespaces, tc.want)
		}
	}
	if got := a.set.Load().fileGrants; got != 4 {
		t.Errorf("%d grants loaded; want 4", got)
	}
}

func TestTokenFile_ErrorsNameFileAndLineNeverTheToken(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cfg     Config
		content string
		want    []string // substrings of the error after "<file>:"
	}{
		{"too few fields", Config{}, "# c\nci admin\n", []string{":2:", "want NAME SCOPES TOKEN [NAMESPACES], got 2 fields"}},
		{"too many fields", Config{}, "ci admin " + adminTok + " a b\n", []string{":1:", "got 5 fields"}},
		{"unknown scope", Config{}, "ci admin,wirte " + adminTok + "\n", []string{":1:", `unknown scope "wirte"`, "admin, fetch, read, agent"}},
		{"fields swapped", Config{}, "ci " + adminTok + " admin\n", []string{":1:", "not shown since it may be a token"}},
		{"duplicate name", Config{}, "ci admin " + adminTok + "\n\nci fetch " + fetchTok + "\n", []string{":3:", `duplicate name "ci" (first on line 1)`}},
		{"duplicate token", Config{}, "a admin " + adminTok + "\nb read " + adminTok + "\n", []string{":2:", `grant "b" has the same token as grant "a" (line 1)`}},
		{"same token as --admin-token", Config{AdminToken: adminTok}, "a read " + adminTok + "\n", []string{":1:", `same token as --admin-token`}},
		{"same token as --agent-token", Config{AgentToken: agentTok}, "\na read " + agentTok + "\n", []string{":2:", `same token as --agent-token`}},
		{"reserved admin-token", Config{}, "admin-token admin " + adminTok + "\n", []string{":1:", `name "admin-token" is reserved`}},
		{"reserved agent-token", Config{}, "agent-token agent " + agentTok + "\n", []string{`"agent-token" is reserved`}},
		{"reserved trusted-network", Config{}, "trusted-network admin " + adminTok + "\n", []string{`"trusted-network" is reserved`}},
		{"reserved anonymous", Config{}, "anonymous read " + readTok + "\n", []string{`"anonymous" is reserved`}},
		{"empty scope list", Config{}, "ci , " + adminTok + "\n", []string{":1:", "no scope"}},
		{"empty namespace pattern", Config{}, "p agent " + payTok + " a,,b\n", []string{":1:", "empty namespace pattern"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.TokenFile = writeTokenFile(t, tc.content)
			_, err := New(tc.cfg)
			if err == nil {
				t.Fatal("New accepted the file")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tc.cfg.TokenFile+":") {
				t.Errorf("error %q does not start with the file name", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q lacks %q", msg, w)
				}
			}
			assertNoSecret(t, "error", msg)
		})
	}
}

func TestTokenFile_ShortTokenAcceptedWithWarning(t *testing.T) {
	var logs logBuffer
	file := writeTokenFile(t, "tiny read short-tok\nfine read "+readTok+"\nns read "+fetchTok+" x-*\n")
	a := mustNew(t, Config{TokenFile: file, AdminToken: "short-admin", Logger: logs.logger()})
	if g, ok := a.Lookup("short-tok"); !ok || g.Name != "tiny" {
		t.Fatalf("short token not accepted: %+v %v", g, ok)
	}
	out := logs.String()
	for _, want := range []string{
		`level=WARN msg="token shorter than 16 characters" file=` + file + ` line=1 grant=tiny`,
		`level=WARN msg="token shorter than 16 characters" grant=admin-token`,
		`msg="namespace patterns have no effect without scope agent" file=` + file + ` line=3 grant=ns`,
		`msg="token file loaded" file=` + file + ` grants=3`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "grant=fine") || strings.Contains(out, "short-tok") || strings.Contains(out, "short-admin") {
		t.Errorf("unexpected warning or a token in the log:\n%s", out)
	}
}

func TestReload_PicksUpChangesAndKeepsOldSetOnBrokenFile(t *testing.T) {
	var logs logBuffer
	file := writeTokenFile(t, "old read "+readTok+"\n")
	a := mustNew(t, Config{TokenFile: file, AdminToken: adminTok, Logger: logs.logger()})
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	has := func(tok string) bool { _, ok := a.Lookup(tok); return ok }

	write("new fetch " + fetchTok + "\npay agent " + payTok + "\n")
	if err := a.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if has(readTok) || !has(fetchTok) || !has(payTok) || !has(adminTok) {
		t.Fatalf("after reload: read %v fetch %v pay %v admin %v; want false true true true",
			has(readTok), has(fetchTok), has(payTok), has(adminTok))
	}
	if !a.Configured(ScopeAgent) || a.hasExplicit(ScopeRead) {
		t.Error("Configured does not follow the reloaded file")
	}
	if !strings.Contains(logs.String(), `msg="token file reloaded" file=`+file+` grants=2`) {
		t.Errorf("no reload line with the count:\n%s", logs.String())
	}

	write("new fetch " + fetchTok + "\nbroken\n")
	err := a.Reload()
	if err == nil || !strings.Contains(err.Error(), file+":2:") {
		t.Fatalf("Reload of a broken file = %v; want an error at %s:2", err, file)
	}
	if !has(fetchTok) || !has(payTok) {
		t.Fatal("a broken file replaced the tokens in use")
	}

	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err == nil || !has(payTok) {
		t.Fatalf("Reload of a missing file = %v, pay token kept %v", err, has(payTok))
	}
	assertNoSecret(t, "log", logs.String())

	// Without a token file there is nothing to reload.
	if err := mustNew(t, Config{AdminToken: adminTok}).Reload(); err != nil {
		t.Fatalf("Reload without a file: %v", err)
	}
}

func TestReload_ConcurrentWithLookups(t *testing.T) {
	file := writeTokenFile(t, "a read "+readTok+"\n")
	a := mustNew(t, Config{TokenFile: file})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			if _, ok := a.Lookup(readTok); !ok {
				t.Error("token lost during reload")
				return
			}
		}
	}()
	for range 50 {
		if err := a.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	<-done
}
