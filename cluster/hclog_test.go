package cluster

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/wsregistry/wsregistry/internal/testutil"
)

// A real raft bootstrapping through the adapter: its lines carry node= once (ours), and
// hclog.Fmt arguments and server lists come out formatted, not as Go syntax.
func TestHclog_RaftLinesCarryNodeOnceAndFormattedArguments(t *testing.T) {
	var buf testutil.LogBuffer
	cfg := testConfig(t, "solo")
	cfg.BootstrapExpect = 1
	cfg.RaftLogs = hclog.Info
	cfg.Logger = slog.New(slog.NewTextHandler(&buf, nil)).With("node", "solo")
	n := open(t, cfg)
	testutil.Eventually(t, 10*time.Second, n.IsLeader, "no leader")
	testutil.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(buf.String(), `msg="entering leader state"`)
	}, "raft did not log its election:\n%s", buf.String())
	// Restarted on its state, raft logs the configuration it finds: a server list.
	addr := cfg.Advertise
	n.Close()
	ln := listen(t)
	cfg.Listener, cfg.Advertise = ln, ln.Addr().String()
	open(t, cfg)
	testutil.Eventually(t, 10*time.Second, func() bool {
		return strings.Count(buf.String(), `msg="initial configuration"`) == 2
	}, "raft did not log its configuration at restart:\n%s", buf.String())

	out := buf.String()
	if !strings.Contains(out, "servers=[solo@"+addr+"]") {
		t.Errorf("no formatted server list in:\n%s", out)
	}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.Contains(line, "subsystem=raft") {
			continue
		}
		if c := strings.Count(line, " node="); c != 1 {
			t.Errorf("node= %d times: %s", c, line)
		}
		for _, raw := range []string{"%+v", "%#v", "{Suffrage:", "Node at "} {
			if strings.Contains(line, raw) {
				t.Errorf("unformatted %q: %s", raw, line)
			}
		}
	}
}

// The JSON handler gets strings too, not hclog.Format's [format, args] list.
func TestHclog_FmtArgumentsAreFormattedForJSON(t *testing.T) {
	var buf bytes.Buffer
	l := newHclogAdapter(slog.New(slog.NewJSONHandler(&buf, nil)), hclog.Info)
	l.Info("configuration", "servers", hclog.Fmt("%+v", []raft.Server{{ID: "a", Address: "h:1"}, {ID: "b", Address: "h:2", Suffrage: raft.Nonvoter}}),
		"pct", hclog.Fmt("%0.2f%%", 12.5), "peer", raft.Server{ID: "c", Address: "h:3"}, "node", "other")
	got := buf.String()
	for _, want := range []string{`"servers":"[a@h:1 b@h:2(Nonvoter)]"`, `"pct":"12.50%"`, `"peer":"c@h:3"`, `"raft_node":"other"`} {
		if !strings.Contains(got, want) {
			t.Errorf("want %s in %s", want, got)
		}
	}
}

// A follower's "failed to get previous log" (a commit notice that raced its append) is not
// a warning; raft's other warnings still are.
func TestHclog_NoticeRaceIsDebugOnly(t *testing.T) {
	var buf bytes.Buffer
	l := newHclogAdapter(slog.New(slog.NewTextHandler(&buf, nil)), hclog.Info)
	l.Warn("failed to get previous log", "previous-index", 9, "last-index", 8)
	l.Warn("previous log term mis-match", "ours", 1, "remote", 2)
	got := buf.String()
	if strings.Contains(got, "failed to get previous log") {
		t.Errorf("routine follower line logged at warn: %s", got)
	}
	if !strings.Contains(got, "previous log term mis-match") {
		t.Errorf("other warnings must stay: %s", got)
	}
}
