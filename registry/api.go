package registry

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strconv"

	"github.com/wsregistry/wsregistry/auth"
	"github.com/wsregistry/wsregistry/watch"
)

func (n *Node) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", n.handleReady)
	read := func(what string, h http.HandlerFunc) http.HandlerFunc {
		return n.auth.Require(auth.ScopeRead, what, h)
	}
	mux.HandleFunc("GET /metrics", read("metrics", n.metrics.handler().ServeHTTP))
	mux.HandleFunc("GET /v1/where/{namespace...}", read("where", n.read(n.handleHTTPWhere)))
	mux.HandleFunc("GET /v1/namespaces", read("namespaces", n.read(n.handleNamespaces)))
	mux.HandleFunc("GET /v1/namespaces/{namespace...}", read("namespaces", n.read(n.handleNamespace)))
	mux.HandleFunc("GET /v1/cluster", read("cluster", n.read(n.handleCluster)))
	// A proxied call reaches an agent's handlers: it needs a credential like a mutation.
	fetch := n.auth.Require(auth.ScopeFetch, "fetch", n.handleFetch)
	mux.HandleFunc("POST /v1/fetch/{namespace}/{path...}", fetch)
	mux.HandleFunc("POST /v1/fetch/{namespace}", fetch)
	mux.HandleFunc("POST /v1/join", n.admin("join", n.handleAdminJoin))
	mux.HandleFunc("POST /v1/leave", n.admin("leave", n.handleLeave))
	mux.HandleFunc("POST /v1/remove/{id}", n.admin("remove", n.handleRemove))
	mux.HandleFunc("GET /v1/snapshot", n.admin("snapshot save", n.handleSnapshotSave))
	mux.HandleFunc("POST /v1/snapshot", n.admin("snapshot restore", n.handleSnapshotRestore))

	n.mountUI(mux, read)
	if n.cfg.Pprof {
		// Profiles expose internals: admin only, like the other debug switches.
		mux.HandleFunc("/debug/pprof/", n.admin("pprof", pprof.Index))
		mux.HandleFunc("/debug/pprof/cmdline", n.admin("pprof", pprof.Cmdline))
		mux.HandleFunc("/debug/pprof/profile", n.admin("pprof", pprof.Profile))
		mux.HandleFunc("/debug/pprof/symbol", n.admin("pprof", pprof.Symbol))
		mux.HandleFunc("/debug/pprof/trace", n.admin("pprof", pprof.Trace))
	}
	if n.cfg.FaultInjection {
		mux.HandleFunc("POST /v1/debug/partition", n.admin("partition", n.handlePartition))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// admin guards a mutation: a credential with scope admin (or, with none configured, a
// caller on --trusted-networks), and one audit line with its outcome.
func (n *Node) admin(what string, h http.HandlerFunc) http.HandlerFunc {
	return n.auth.Require(auth.ScopeAdmin, what, func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h(rec, r)
		var err error
		if rec.status >= 400 {
			err = fmt.Errorf("answered %d", rec.status)
		}
		n.auth.Audit(r, what, err)
	})
}

// statusRecorder remembers the status a handler answered, for the audit line.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Flush keeps streaming responses (pprof's trace) streaming.
func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// apiError is the error body of every HTTP endpoint.
type apiError struct {
	Status  int    `json:"status"`
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, apiError{Status: status, Message: msg})
}

// read wraps every read endpoint: it answers how fresh this node's state is, so a client can
// judge a local (possibly stale) answer.
func (n *Node) read(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		hdr := w.Header()
		hdr.Set("X-Wsregistry-Index", strconv.FormatUint(n.raft.AppliedIndex(), 10))
		leaderID, _ := n.raft.Leader()
		hdr.Set("X-Wsregistry-Known-Leader", strconv.FormatBool(leaderID != ""))
		hdr.Set("X-Wsregistry-Last-Contact", strconv.FormatInt(n.lastContactMillis(), 10))
		if r.URL.Query().Get("consistent") == "true" {
			n.consistentRead(w, r, h)
			return
		}
		if n.fenced.Load() && r.URL.Path != "/v1/cluster" {
			// Its registrations are being purged by the majority: a local answer could be a
			// ghost for as long as the partition lasts.
			writeError(w, http.StatusServiceUnavailable, "this node is fenced (cut off from the leader): read from another node, or use ?consistent=true")
			return
		}
		h(w, r)
	}
}

func (n *Node) lastContactMillis() int64 {
	d := n.raft.SinceLeaderContact()
	if d < 0 {
		return -1
	}
	return d.Milliseconds()
}

func (n *Node) handleReady(w http.ResponseWriter, _ *http.Request) {
	ok, why := n.Ready()
	if !ok {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": why})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (n *Node) handleHTTPWhere(w http.ResponseWriter, r *http.Request) {
	ns := r.PathValue("namespace")
	if err := ValidateNamespace(ns); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	addr, ok := n.Where(ns)
	if !ok {
		writeError(w, http.StatusNotFound, "no live instance of namespace "+strconv.Quote(ns))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"namespace": ns, "host": addr})
}

func (n *Node) handleNamespaces(w http.ResponseWriter, _ *http.Request) {
	all := n.state.Namespaces()
	out := make([]watch.Namespace, 0, len(all))
	for _, ns := range all {
		out = append(out, watch.NamespaceOf(ns.Name, ns.Instances))
	}
	writeJSON(w, http.StatusOK, out)
}

func (n *Node) handleNamespace(w http.ResponseWriter, r *http.Request) {
	ns := r.PathValue("namespace")
	if err := ValidateNamespace(ns); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	regs := n.state.Instances(ns)
	if len(regs) == 0 {
		writeError(w, http.StatusNotFound, "no live instance of namespace "+strconv.Quote(ns))
		return
	}
	writeJSON(w, http.StatusOK, watch.NamespaceOf(ns, regs))
}

// consistentRead answers from this node once it has applied everything the leader had
// committed when the request came (the leader's read index), so the answer reflects every
// write committed before it.
func (n *Node) consistentRead(w http.ResponseWriter, r *http.Request, h http.HandlerFunc) {
	if err := n.raft.ConsistentRead(r.Context()); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	w.Header().Set("X-Wsregistry-Index", strconv.FormatUint(n.raft.AppliedIndex(), 10))
	h(w, r)
}

// handlePartition flips the fault switch: ?on=true cuts this node off from its peers (raft
// and internal calls, both directions) without touching the host's network.
func (n *Node) handlePartition(w http.ResponseWriter, r *http.Request) {
	on, err := strconv.ParseBool(r.URL.Query().Get("on"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "partition needs ?on=true or ?on=false")
		return
	}
	n.raft.SetPartitioned(on)
	n.log.Warn("fault switch", "partitioned", on)
	writeJSON(w, http.StatusOK, map[string]bool{"partitioned": on})
}
