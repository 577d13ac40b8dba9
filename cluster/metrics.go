package cluster

import (
	"sync"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	gmprom "github.com/hashicorp/go-metrics/compat/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// raft (and the log store's wrapper, logstore.go) report their timings through go-metrics, into one process-global
// sink. The compat packages follow whichever backend raft itself was built with (armon's
// unless the hashicorpmetrics build tag is set), so the sink below is the one raft writes to.
//
// Limitation: the sink is per process, not per node. One wsregistry process runs one node,
// so in production these are that node's numbers; where several nodes share a process (the
// tests), every node's /metrics shows the sum of all of them.

// raftMetric names one go-metrics key (as the sink flattens it: dots become underscores) in
// Prometheus' terms. go-metrics keys are camelCase and Prometheus' lint wants snake_case, so
// the sink's families are renamed, not passed through.
type raftMetric struct {
	key   []string // the go-metrics key raft emits
	name  string   // the Prometheus family it becomes
	help  string
	state string // for the state counters: the value of their "state" label
}

// raftMetrics are the raft timings and counters a node exports, everything else raft emits
// is filtered out before it reaches the sink (each emission is on raft's hot path). Timers
// are summaries in seconds (TimerGranularity below), quantiles over the sink's 10 s window.
var raftMetrics = []raftMetric{
	{key: []string{"raft", "commitTime"}, name: "wsregistry_raft_commit_seconds",
		help: "Leader only: time from dispatching a log entry to its commit by a quorum (raft's raft.commitTime)."},
	{key: []string{"raft", "fsm", "apply"}, name: "wsregistry_raft_fsm_apply_seconds",
		help: "Time to apply one committed command entry to the state (raft's raft.fsm.apply)."},
	{key: []string{"raft", "replication", "appendEntries", "rpc"}, name: "wsregistry_raft_append_entries_rpc_seconds",
		help: "Leader only: round trip of an AppendEntries call to a follower, label peer_id (raft's raft.replication.appendEntries.rpc)."},
	{key: storeLogsKey, name: "wsregistry_raft_store_logs_seconds",
		help: "Time to write a batch of log entries to the raft log (raft/wal, or raft.db with --raft-log-store bolt), its sync to disk included."},
	{key: []string{"raft", "snapshot", "create"}, name: "wsregistry_raft_snapshot_create_seconds",
		help: "Time to take a raft snapshot, from asking the state for it to having it persisted (raft's raft.snapshot.create)."},
	{key: []string{"raft", "snapshot", "persist"}, name: "wsregistry_raft_snapshot_persist_seconds",
		help: "Time to write a raft snapshot to disk (raft's raft.snapshot.persist)."},
	{key: []string{"raft", "fsm", "restore"}, name: "wsregistry_raft_fsm_restore_seconds",
		help: "Time to restore the state from a snapshot: at start, or one sent by the leader (raft's raft.fsm.restore)."},
	{key: []string{"raft", "state", "leader"}, name: raftStateChangesName, state: "leader"},
	{key: []string{"raft", "state", "candidate"}, name: raftStateChangesName, state: "candidate"},
	{key: []string{"raft", "state", "follower"}, name: raftStateChangesName, state: "follower"},
}

const (
	raftStateChangesName = "wsregistry_raft_state_changes_total"
	raftStateChangesHelp = `Times this node entered a raft state, label state (leader, candidate, follower; raft's raft.state.*): the sum of state="leader" over the nodes counts leader changes.`
)

var raftSink struct {
	once sync.Once
	reg  *prometheus.Registry // holds only the sink: gathered and renamed per scrape
	err  error
}

// installRaftSink points go-metrics' global at a Prometheus sink, once per process.
func installRaftSink() error {
	raftSink.once.Do(func() {
		opts := gmprom.PrometheusOpts{
			Name: "wsregistry_raft_sink",
			// Never expire: a series that vanishes after a quiet minute (no snapshot, no
			// election) breaks rates and dashboards. The only label is peer_id, bounded by
			// the members this process has seen.
			Expiration: 0,
			// A private registry, never the default one (no package-level registries).
			Registerer: prometheus.NewRegistry(),
		}
		var allow, block []string
		for _, m := range raftMetrics {
			key := joinKey(m.key)
			allow = append(allow, key)
			if m.state != "" {
				opts.CounterDefinitions = append(opts.CounterDefinitions, gmprom.CounterDefinition{Name: m.key, Help: raftStateChangesHelp})
			} else if m.name != "wsregistry_raft_append_entries_rpc_seconds" {
				// Declared up front, so the series exist (count 0) before the first event.
				opts.SummaryDefinitions = append(opts.SummaryDefinitions, gmprom.SummaryDefinition{Name: m.key, Help: m.help})
			}
		}
		// raft also emits the round trip under a key ending in the peer's id (its legacy
		// form): one family per peer. The labelled form above is the one kept.
		block = append(block, "raft.replication.appendEntries.rpc.")
		sink, err := gmprom.NewPrometheusSinkFrom(opts)
		if err != nil {
			raftSink.err = err
			return
		}
		conf := gometrics.DefaultConfig("")
		conf.EnableHostname = false       // no hostname inside metric names
		conf.EnableRuntimeMetrics = false // the Go collector covers the runtime
		conf.TimerGranularity = time.Second
		conf.FilterDefault = false
		conf.AllowedPrefixes = allow
		conf.BlockedPrefixes = block
		if _, err := gometrics.NewGlobal(conf, sink); err != nil {
			raftSink.err = err
			return
		}
		raftSink.reg = opts.Registerer.(*prometheus.Registry)
	})
	return raftSink.err
}

func joinKey(key []string) string {
	s := key[0]
	for _, k := range key[1:] {
		s += "." + k
	}
	return s
}

// flatKey is the name the sink gives a key.
func flatKey(key []string) string {
	s := key[0]
	for _, k := range key[1:] {
		s += "_" + k
	}
	return s
}

// RaftMetrics is a Prometheus collector of raft's own timings and state changes (see
// raftMetrics), for a node's registry. Every call returns a new collector over the one
// process-wide sink (see the limitation above).
func RaftMetrics() (prometheus.Collector, error) {
	if err := installRaftSink(); err != nil {
		return nil, err
	}
	c := &raftCollector{byKey: map[string]raftMetric{}, descs: map[string]*prometheus.Desc{}}
	for _, m := range raftMetrics {
		c.byKey[flatKey(m.key)] = m
		if _, ok := c.descs[m.name]; ok {
			continue
		}
		switch {
		case m.state != "":
			c.descs[m.name] = prometheus.NewDesc(m.name, raftStateChangesHelp, []string{"state"}, nil)
		case m.name == "wsregistry_raft_append_entries_rpc_seconds":
			c.descs[m.name] = prometheus.NewDesc(m.name, m.help, []string{"peer_id"}, nil)
		default:
			c.descs[m.name] = prometheus.NewDesc(m.name, m.help, nil, nil)
		}
	}
	return c, nil
}

type raftCollector struct {
	byKey map[string]raftMetric
	descs map[string]*prometheus.Desc
}

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect renames what the sink holds. Its values are taken as they are: the sink's
// summaries and counters do the aggregation.
func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	families, err := raftSink.reg.Gather()
	if err != nil {
		return // the sink only ever holds well-formed families; nothing to report then
	}
	for _, f := range families {
		m, ok := c.byKey[f.GetName()]
		if !ok {
			continue
		}
		desc := c.descs[m.name]
		for _, s := range f.GetMetric() {
			switch {
			case m.state != "" && s.GetCounter() != nil:
				ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, s.GetCounter().GetValue(), m.state)
			case m.state == "" && s.GetSummary() != nil:
				var labels []string
				if m.name == "wsregistry_raft_append_entries_rpc_seconds" {
					peer := labelValue(s, "peer_id")
					if peer == "" {
						continue
					}
					labels = []string{peer}
				}
				sum := s.GetSummary()
				q := make(map[float64]float64, len(sum.GetQuantile()))
				for _, v := range sum.GetQuantile() {
					q[v.GetQuantile()] = v.GetValue()
				}
				ch <- prometheus.MustNewConstSummary(desc, sum.GetSampleCount(), sum.GetSampleSum(), q, labels...)
			}
		}
	}
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
