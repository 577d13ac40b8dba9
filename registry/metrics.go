package registry

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/wsserver"
)

// nodeMetrics are one node's Prometheus metrics, in a registry of its own so several nodes
// can run in one process. No label carries a namespace, host or session: those are
// unbounded.
type nodeMetrics struct {
	reg *prometheus.Registry

	wsRequests   *requestsCollector
	onlineOK     prometheus.Counter // a pre-resolved child of wsRequests for the hot path
	where        *whereStats        // successful lookups: count and duration
	ignored      prometheus.Counter
	fetchSeconds *prometheus.HistogramVec
	writes       *prometheus.CounterVec
	writeSeconds *prometheus.HistogramVec
	batchSize    prometheus.Histogram
	purges       *prometheus.CounterVec
	snapshots    *prometheus.HistogramVec
	agentEvents  *prometheus.CounterVec
	refused      *prometheus.CounterVec
	authRefused  *prometheus.CounterVec
	httpWhere    *prometheus.CounterVec // HTTP API lookups by result
	// Raft command entries applied here by encoding; pre-resolved (one per entry).
	entriesBinary, entriesJSON prometheus.Counter
}

func (n *Node) startMetrics() {
	m := &nodeMetrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	m.where = newWhereStats()
	m.wsRequests = newRequestsCollector(m.where)
	m.onlineOK = m.wsRequests.WithLabelValues("ws", "online", "200")
	m.ignored = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "wsregistry_ws_ignored_messages_total",
		Help: "Agent messages ignored as the original does (not JSON, or not a frame).",
	})
	m.fetchSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "wsregistry_fetch_duration_seconds",
		Help:    "Proxied calls to agents by result (ok, agent_error, not_found, timeout, unreachable, bad_request).",
		Buckets: prometheus.ExponentialBuckets(1e-4, 4, 10),
	}, []string{"result"})
	m.writes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wsregistry_writes_total",
		Help: "Writes (registrations, deregistrations, purges) by path (local on the leader, forwarded from a follower) and result.",
	}, []string{"path", "result"})
	m.writeSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "wsregistry_write_duration_seconds",
		Help:    "Time from proposing a write to having it applied on this node, by path.",
		Buckets: prometheus.ExponentialBuckets(1e-4, 3, 12),
	}, []string{"path"})
	m.batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "wsregistry_group_commit_batch_size",
		Help:    "Commands coalesced into one raft entry by the leader.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 12),
	})
	entries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wsregistry_raft_entries_applied_total",
		Help: "Raft command entries applied on this node, by encoding: binary, or json (entries of earlier builds, and every entry while a server has not announced that it reads binary ones, as during a rolling upgrade).",
	}, []string{"encoding"})
	m.entriesBinary, m.entriesJSON = entries.WithLabelValues("binary"), entries.WithLabelValues("json")
	m.reg.MustRegister(entries)
	m.purges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wsregistry_purges_total",
		Help: "Purges proposed by this node: silent_member (leader), restart (own older incarnations), removed (node left), reconcile (state fixed to match this node's connections), adopted_gone (leader: agents held by the cluster that stopped answering).",
	}, []string{"reason"})
	m.snapshots = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "wsregistry_snapshot_duration_seconds",
		Help:    "Time to persist a raft snapshot of the state, by result.",
		Buckets: prometheus.ExponentialBuckets(1e-3, 3, 10),
	}, []string{"result"})
	m.agentEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wsregistry_agent_connections_total",
		Help: "Agent connections opened and closed on this node.",
	}, []string{"event"})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wsregistry_limit_refusals_total",
		Help: "Agent connections or requests refused by a limit, label reason: connection_limit, rate_limit, registration_limit.",
	}, []string{"reason"})
	m.authRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wsregistry_auth_refusals_total",
		Help: "Requests and connections refused for want of a credential, label reason: no_token, bad_token, scope, untrusted, namespace, peer.",
	}, []string{"reason"})
	m.reg.MustRegister(m.refused, m.authRefused)
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wsregistry_peers_unauthenticated",
		Help: "1 while this node accepts peers without a credential (no --cluster-key, no mutual TLS): from trusted networks only, or from anywhere with --cluster-insecure.",
	}, func() float64 {
		if n.raft == nil {
			return 0
		}
		switch n.raft.Security() {
		case cluster.PeerTrusted, cluster.PeerInsecure:
			return 1
		}
		return 0
	}))
	m.reg.MustRegister(m.wsRequests, m.ignored, newWhereHistogram(m.where), m.fetchSeconds, m.writes, m.writeSeconds,
		m.batchSize, m.purges, m.snapshots, m.agentEvents)

	gauge := func(name, help string, f func() float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	gauge("wsregistry_registrations", "Live registrations in this node's replicated state.", func() float64 { return float64(n.state.Stats().Registrations) })
	gauge("wsregistry_namespaces", "Namespaces with at least one live instance.", func() float64 { return float64(n.state.Stats().Namespaces) })
	gauge("wsregistry_sessions", "Agent sessions holding registrations, cluster-wide.", func() float64 { return float64(n.state.Stats().Sessions) })
	gauge("wsregistry_agent_connections", "Agent connections open on this node.", func() float64 { return float64(n.ws.Len()) })
	gauge("wsregistry_fenced", "1 while this node has fenced itself (cut off from the leader).", func() float64 { return boolFloat(n.fenced.Load()) })
	gauge("wsregistry_ready", "1 when /readyz answers 200.", func() float64 { ok, _ := n.Ready(); return boolFloat(ok) })
	m.reg.MustRegister(&raftCollector{n: n})
	m.httpWhere = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wsregistry_http_lookups_total",
		Help: "Lookups through the HTTP API (GET /v1/where) by result: found, not_found.",
	}, []string{"result"})
	m.reg.MustRegister(m.httpWhere)
	// Every known label value from the start: a series that appears only with its first
	// event has no rate before it, and alerts on increase() miss that first event.
	for _, v := range []string{"found", "not_found"} {
		m.httpWhere.WithLabelValues(v)
	}
	for _, v := range []string{"silent_member", "restart", "removed", "reconcile", "adopted_gone"} {
		m.purges.WithLabelValues(v)
	}
	for _, v := range []string{"connection_limit", "rate_limit", "registration_limit"} {
		m.refused.WithLabelValues(v)
	}
	for _, v := range []string{"no_token", "bad_token", "scope", "untrusted", "namespace", "peer"} {
		m.authRefused.WithLabelValues(v)
	}
	for _, v := range []string{"ok", "agent_error", "not_found", "timeout", "unreachable", "bad_request"} {
		m.fetchSeconds.WithLabelValues(v)
	}
	// raft's own timings (commit, apply, append entries, snapshots); process-wide, see cluster.RaftMetrics.
	if rm, err := cluster.RaftMetrics(); err != nil {
		n.log.Warn("raft metrics unavailable", "err", err)
	} else {
		m.reg.MustRegister(rm)
	}
	n.metrics = m
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (m *nodeMetrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// observeWrite records one submit.
func (m *nodeMetrics) observeWrite(path string, took time.Duration, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.writes.WithLabelValues(path, result).Inc()
	m.writeSeconds.WithLabelValues(path).Observe(took.Seconds())
}

// observeRequest counts one agent request by its reply status.
func (m *nodeMetrics) observeRequest(cmd string, err error) {
	if err == nil {
		switch cmd {
		case "online":
			m.onlineOK.Inc()
			return
		case "where":
			// handleWhere counts and times its successes in whereStats; a where/200 child
			// of the vector would duplicate that series and fail every scrape.
			return
		}
	}
	m.wsRequests.WithLabelValues("ws", cmd, statusLabel(err)).Inc()
}

// statusLabel is bounded: iocore statuses are small integers or a few codes.
func statusLabel(err error) string {
	if err == nil {
		return "200"
	}
	status, code, _ := failureOf(err)
	if code != "" {
		return code
	}
	if status < 100 || status > 999 {
		return "other"
	}
	return strconv.Itoa(status)
}

// raftCollector reads raft's own state and counters per node on every scrape; raft's
// go-metrics sink is process-global, which would mix the nodes of one process.
type raftCollector struct{ n *Node }

var (
	raftStateDesc       = prometheus.NewDesc("wsregistry_raft_state", "Raft state of this node: 1 for the current one of follower, candidate, leader, shutdown.", []string{"state"}, nil)
	raftTermDesc        = prometheus.NewDesc("wsregistry_raft_term", "Current raft term.", nil, nil)
	raftCommitDesc      = prometheus.NewDesc("wsregistry_raft_commit_index", "Highest log index known committed.", nil, nil)
	raftAppliedDesc     = prometheus.NewDesc("wsregistry_raft_applied_index", "Highest log index applied to this node's state.", nil, nil)
	raftLastIndexDesc   = prometheus.NewDesc("wsregistry_raft_last_log_index", "Last index in this node's log.", nil, nil)
	raftLastContactDesc = prometheus.NewDesc("wsregistry_raft_last_contact_seconds", "Time since this node heard from the leader (0 on the leader, -1 never).", nil, nil)
	raftPeersDesc       = prometheus.NewDesc("wsregistry_raft_voters", "Voters in the configuration this node knows.", nil, nil)
	raftSnapIndexDesc   = prometheus.NewDesc("wsregistry_raft_last_snapshot_index", "Index of the last snapshot.", nil, nil)
	raftFSMPendingDesc  = prometheus.NewDesc("wsregistry_raft_fsm_pending", "Committed entries waiting to be applied.", nil, nil)
	raftMemberSilence   = prometheus.NewDesc("wsregistry_raft_silent_members", "Members not answering the leader's heartbeats (leader only).", nil, nil)
	// Autopilot's counts live in cluster (it alone touches raft); every action has a series
	// from the start.
	autopilotActionsDesc  = prometheus.NewDesc("wsregistry_autopilot_actions_total", "Membership changes autopilot made while this node led, by action: removed (a dead voter), promoted (a non-voter to voter), rejoined (a removed node that answers again, added back).", []string{"action"}, nil)
	autopilotFailuresDesc = prometheus.NewDesc("wsregistry_autopilot_failures_total", "Membership changes autopilot tried while this node led and raft refused.", nil, nil)
)

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{raftStateDesc, raftTermDesc, raftCommitDesc, raftAppliedDesc, raftLastIndexDesc,
		raftLastContactDesc, raftPeersDesc, raftSnapIndexDesc, raftFSMPendingDesc, raftMemberSilence,
		autopilotActionsDesc, autopilotFailuresDesc} {
		ch <- d
	}
}

func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	if n.raft == nil {
		return
	}
	st := n.raft.Status()
	for _, name := range cluster.States {
		ch <- prometheus.MustNewConstMetric(raftStateDesc, prometheus.GaugeValue, boolFloat(name == st.State), name)
	}
	ch <- prometheus.MustNewConstMetric(raftTermDesc, prometheus.GaugeValue, float64(st.Term))
	ch <- prometheus.MustNewConstMetric(raftCommitDesc, prometheus.GaugeValue, float64(st.CommitIndex))
	ch <- prometheus.MustNewConstMetric(raftAppliedDesc, prometheus.GaugeValue, float64(st.AppliedIndex))
	ch <- prometheus.MustNewConstMetric(raftLastIndexDesc, prometheus.GaugeValue, float64(st.LastIndex))
	lc := -1.0
	if d := n.raft.SinceLeaderContact(); d >= 0 {
		lc = d.Seconds()
	}
	ch <- prometheus.MustNewConstMetric(raftLastContactDesc, prometheus.GaugeValue, lc)
	voters := 0
	for _, m := range n.raft.Members() {
		if m.Voter {
			voters++
		}
	}
	ch <- prometheus.MustNewConstMetric(raftPeersDesc, prometheus.GaugeValue, float64(voters))
	ch <- prometheus.MustNewConstMetric(raftSnapIndexDesc, prometheus.GaugeValue, float64(st.LastSnapshotIndex))
	ch <- prometheus.MustNewConstMetric(raftFSMPendingDesc, prometheus.GaugeValue, float64(st.FSMPending))
	ch <- prometheus.MustNewConstMetric(raftMemberSilence, prometheus.GaugeValue, float64(len(n.raft.SilentMembers(n.cfg.NodeGrace))))
	ap := n.raft.Autopilot()
	for _, action := range cluster.AutopilotActions {
		ch <- prometheus.MustNewConstMetric(autopilotActionsDesc, prometheus.CounterValue, float64(ap.Counts[action]), action)
	}
	ch <- prometheus.MustNewConstMetric(autopilotFailuresDesc, prometheus.CounterValue, float64(ap.Failures))
}

// failureOf is the iocore status a handler error is answered with.
func failureOf(err error) (status int, code, message string) {
	var e *wsserver.Error
	if errors.As(err, &e) {
		return e.Status, e.Code, e.Message
	}
	return 500, "", err.Error()
}

// protocolLabel keeps the protocol label bounded: agents may send any string.
func protocolLabel(p string) string {
	switch p {
	case "ws", "http":
		return p
	}
	return "other"
}

// fetchResult classifies a Fetch outcome for the latency histogram.
func fetchResult(err error) string {
	if err == nil {
		return "ok"
	}
	var we *wsserver.Error
	switch {
	case errors.As(err, &we) && we.Code == "ECONNABORTED":
		return "timeout"
	case errors.As(err, &we) && we.Status == 404 && we.Code == "":
		return "not_found"
	case errors.As(err, &we) && we.Status == 400:
		return "bad_request"
	case errors.As(err, &we):
		return "agent_error"
	}
	return "unreachable"
}
