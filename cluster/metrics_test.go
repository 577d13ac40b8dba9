package cluster

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wsregistry/wsregistry/internal/testutil"
)

// gatherRaft registers a fresh RaftMetrics collector in a registry of its own, as every node
// does, and returns its families by name.
func gatherRaft(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	c, err := RaftMetrics()
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

func summaryCount(f *dto.MetricFamily) (n uint64) {
	for _, m := range f.GetMetric() {
		n += m.GetSummary().GetSampleCount()
	}
	return n
}

// raft's go-metrics timings reach a node's own registry, renamed to snake_case seconds, with
// no label but peer_id (bounded by the members) and no peer id inside a metric name.
func TestRaftMetrics_CommitApplyReplicationAndSnapshotReachPrometheus(t *testing.T) {
	before := gatherRaft(t)
	nodes := startCluster(t, 3)
	l := leaderOf(t, nodes)
	for i := range 5 {
		commit(t, l, meta("m"+string(rune('a'+i))))
	}
	if err := l.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}

	want := []string{
		"wsregistry_raft_commit_seconds", "wsregistry_raft_fsm_apply_seconds",
		"wsregistry_raft_append_entries_rpc_seconds", "wsregistry_raft_store_logs_seconds",
		"wsregistry_raft_snapshot_create_seconds", "wsregistry_raft_snapshot_persist_seconds",
	}
	var fams map[string]*dto.MetricFamily
	testutil.Eventually(t, 10*time.Second, func() bool {
		fams = gatherRaft(t)
		for _, name := range want {
			if summaryCount(fams[name]) <= summaryCount(before[name]) {
				return false
			}
		}
		return true
	}, "raft timings did not grow: %v", fams)

	if f := fams["wsregistry_raft_fsm_restore_seconds"]; f == nil || f.GetType() != dto.MetricType_SUMMARY {
		t.Errorf("restore summary not declared before the first restore: %v", f)
	}
	leaderChanges := 0.0
	for _, m := range fams["wsregistry_raft_state_changes_total"].GetMetric() {
		if labelValue(m, "state") == "leader" {
			leaderChanges = m.GetCounter().GetValue()
		}
	}
	if leaderChanges < 1 {
		t.Errorf("wsregistry_raft_state_changes_total{state=leader} = %v after an election", leaderChanges)
	}
	peers := map[string]bool{}
	for _, m := range fams["wsregistry_raft_append_entries_rpc_seconds"].GetMetric() {
		peers[labelValue(m, "peer_id")] = true
	}
	for _, n := range nodes {
		if n != l && !peers[n.ID()] {
			t.Errorf("no append entries round trips to follower %s: %v", n.ID(), peers)
		}
	}
	snake := regexp.MustCompile(`^wsregistry_raft_[a-z_]+$`)
	for name, f := range fams {
		if !snake.MatchString(name) || strings.Contains(name, "node") {
			t.Errorf("family %q is not one of ours in snake_case", name)
		}
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() != "peer_id" && lp.GetName() != "state" {
					t.Errorf("%s carries label %s", name, lp.GetName())
				}
			}
		}
		if strings.HasSuffix(name, "_seconds") {
			// Seconds, not go-metrics' default milliseconds: a local commit is far below 1 s.
			for _, m := range f.GetMetric() {
				if s := m.GetSummary(); s.GetSampleCount() > 0 && s.GetSampleSum()/float64(s.GetSampleCount()) > 1 {
					t.Errorf("%s averages %v: not in seconds?", name, s.GetSampleSum()/float64(s.GetSampleCount()))
				}
			}
		}
	}
}
