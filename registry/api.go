package registry

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/watch"
)

func (n *Node) apiHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", n.handleReady)
	mux.Handle("GET /metrics", n.metrics.handler())
	mux.HandleFunc("GET /v1/where/{namespace...}", n.read(n.handleHTTPWhere))
	mux.HandleFunc("GET /v1/namespaces", n.read(n.handleNamespaces))
	mux.HandleFunc("GET /v1/namespaces/{namespace...}", n.read(n.handleNamespace))
	mux.HandleFunc("POST /v1/fetch/{namespace}/{path...}", n.handleFetch)
	mux.HandleFunc("POST /v1/fetch/{namespace}", n.handleFetch)
	mux.HandleFunc("GET /v1/cluster", n.read(n.handleCluster))
	mux.HandleFunc("POST /v1/join", n.adminOnly(n.handleAdminJoin))
	mux.HandleFunc("POST /v1/leave", n.adminOnly(n.handleLeave))
	mux.HandleFunc("POST /v1/remove/{id}", n.adminOnly(n.handleRemove))
	mux.HandleFunc("GET /v1/snapshot", n.adminOnly(n.handleSnapshotSave))
	mux.HandleFunc("POST /v1/snapshot", n.adminOnly(n.handleSnapshotRestore))

	n.mountUI(mux)
	if n.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	if n.cfg.FaultInjection {
		mux.HandleFunc("POST /v1/debug/partition", n.adminOnly(n.handlePartition))
	}

	key := n.cfg.ClusterKey
	mux.HandleFunc("POST "+cluster.PathPropose, n.raft.ProposeHandler(key))
	mux.HandleFunc("GET "+cluster.PathInfo, n.raft.InfoHandler(key))
	mux.HandleFunc("POST "+cluster.PathJoin, n.raft.JoinHandler(key, n.client))
	mux.HandleFunc("POST "+cluster.PathRemove, n.raft.RemoveHandler(key, n.client))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return mux
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
	if n.raft.IsLeader() {
		return 0
	}
	lc := n.raft.Raft().LastContact()
	if lc.IsZero() {
		return -1
	}
	return time.Since(lc).Milliseconds()
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

// consistentRead answers from the leader after a barrier, so the answer reflects every
// write committed before the request: on the leader itself, or proxied to it.
func (n *Node) consistentRead(w http.ResponseWriter, r *http.Request, h http.HandlerFunc) {
	if n.raft.IsLeader() {
		if err := n.raft.Barrier(n.cfg.CommitWait); err != nil {
			writeError(w, http.StatusServiceUnavailable, "consistent read: barrier failed: "+err.Error())
			return
		}
		w.Header().Set("X-Wsregistry-Index", strconv.FormatUint(n.raft.AppliedIndex(), 10))
		h(w, r)
		return
	}
	leader, err := n.raft.LeaderHTTP()
	if err == nil && (r.Header.Get("X-Wsregistry-Forwarded") != "" || n.raft.Partitioned()) {
		err = errors.New("this node is not the leader either")
	}
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "consistent read: "+err.Error())
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, n.client.Scheme+"://"+leader+r.URL.RequestURI(), nil)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	req.Header.Set("X-Wsregistry-Forwarded", "1")
	resp, err := n.client.HTTP.Do(req)
	if err != nil {
		writeError(w, http.StatusBadGateway, "consistent read: leader "+leader+": "+err.Error())
		return
	}
	defer resp.Body.Close()
	for _, k := range []string{"Content-Type", "X-Wsregistry-Index", "X-Wsregistry-Known-Leader", "X-Wsregistry-Last-Contact"} {
		if v := resp.Header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
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
