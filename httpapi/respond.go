package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/wsregistry/wsregistry/auth"
)

// apiError is the error body of every endpoint.
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

// readScope guards a read: open unless a read token is configured.
func (a *api) readScope(what string, h http.HandlerFunc) http.HandlerFunc {
	return a.auth.Require(auth.ScopeRead, what, h)
}

// admin guards a mutation: a credential with scope admin (or, with none configured, a
// caller on --trusted-networks), and one audit line with its outcome.
func (a *api) admin(what string, h http.HandlerFunc) http.HandlerFunc {
	return a.auth.Require(auth.ScopeAdmin, what, func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h(rec, r)
		var err error
		if rec.status >= 400 {
			err = fmt.Errorf("answered %d", rec.status)
		}
		a.auth.Audit(r, what, err)
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

// read wraps every read endpoint: it answers how fresh this node's state is, so a client can
// judge a local (possibly stale) answer.
func (a *api) read(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		hdr := w.Header()
		hdr.Set("X-Wsregistry-Index", strconv.FormatUint(a.raft.AppliedIndex(), 10))
		leaderID, _ := a.raft.Leader()
		hdr.Set("X-Wsregistry-Known-Leader", strconv.FormatBool(leaderID != ""))
		hdr.Set("X-Wsregistry-Last-Contact", strconv.FormatInt(lastContactMillis(a.raft), 10))
		if r.URL.Query().Get("consistent") == "true" {
			a.consistentRead(w, r, h)
			return
		}
		if a.node.Fenced() && r.URL.Path != "/v1/cluster" {
			// Its registrations are being purged by the majority: a local answer could be a
			// ghost for as long as the partition lasts.
			writeError(w, http.StatusServiceUnavailable, "this node is fenced (cut off from the leader): read from another node, or use ?consistent=true")
			return
		}
		h(w, r)
	}
}

// consistentRead answers from this node once it has applied everything the leader had
// committed when the request came (the leader's read index), so the answer reflects every
// write committed before it.
func (a *api) consistentRead(w http.ResponseWriter, r *http.Request, h http.HandlerFunc) {
	if err := a.raft.ConsistentRead(r.Context()); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	w.Header().Set("X-Wsregistry-Index", strconv.FormatUint(a.raft.AppliedIndex(), 10))
	h(w, r)
}

// lastContactMillis is the time since this node heard from a leader, -1 for never.
func lastContactMillis(c Cluster) int64 {
	d := c.SinceLeaderContact()
	if d < 0 {
		return -1
	}
	return d.Milliseconds()
}
