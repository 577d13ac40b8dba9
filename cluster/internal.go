package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/wsregistry/wsregistry/fsm"
)

// internalHandler serves the calls between nodes. It is reached only through the peer
// port, whose handshake already authenticated the caller (peer.go).
func (n *Node) internalHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+pathInfo, func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, n.Info()) })
	mux.HandleFunc("GET "+pathHealth, n.handleHealth)
	mux.HandleFunc("POST "+pathPropose, n.handlePropose)
	mux.HandleFunc("POST "+pathJoin, n.handleJoin)
	mux.HandleFunc("POST "+pathRemove, n.handleRemove)
	mux.HandleFunc("POST "+pathReadIndex, n.handleReadIndex)
	mux.HandleFunc("POST "+pathRestore, n.handleRestore)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such internal endpoint: " + r.Method + " " + r.URL.Path})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// handlePropose serves forwarded proposals on the leader.
func (n *Node) handlePropose(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, proposeReply{Error: "read body: " + err.Error()})
		return
	}
	cmd, err := fsm.Decode(body)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, proposeReply{Error: err.Error()})
		return
	}
	cmds := []fsm.Command{cmd}
	if b, ok := cmd.(fsm.Batch); ok {
		cmds = b.Commands
	}
	var (
		index uint64
		errs  []error
	)
	if n.IsLeader() {
		index, errs, err = n.batcher.proposeFrom(r.Context(), cmds, true)
	} else {
		err = ErrNotLeader
	}
	if err != nil {
		status := http.StatusServiceUnavailable
		if errors.Is(err, ErrNotLeader) || errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			status = http.StatusMisdirectedRequest
		}
		writeJSON(w, status, proposeReply{Error: err.Error(), Retry: true})
		return
	}
	writeJSON(w, http.StatusOK, proposeReply{Index: index, Results: encodeResults(errs)})
}

// handleReadIndex answers, on the leader, an index that covers every write committed before
// the call: a follower that has applied up to it can answer a read as the leader would.
func (n *Node) handleReadIndex(w http.ResponseWriter, _ *http.Request) {
	if !n.IsLeader() {
		writeJSON(w, http.StatusMisdirectedRequest, map[string]string{"error": "not the leader"})
		return
	}
	if err := n.announce(n.raft.Barrier(n.cfg.CommitWait)); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "barrier: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]uint64{"index": n.AppliedIndex()})
}

// handleRestore restores an uploaded snapshot on the leader (a follower's RestoreSnapshot).
func (n *Node) handleRestore(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxSnapshotUpload+1))
	if err != nil || len(body) > MaxSnapshotUpload {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("snapshot body: %d bytes, %v", len(body), err)})
		return
	}
	if err := n.restoreHere(body); err != nil {
		status := http.StatusServiceUnavailable
		if errors.Is(err, fsm.ErrInvalid) {
			status = http.StatusBadRequest
		}
		writeJSON(w, status, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// leaderOnly runs fn on the leader, passing the same request on to it from a follower.
func (n *Node) leaderOnly(w http.ResponseWriter, r *http.Request, path string, decode func([]byte) error, fn func() error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil {
		err = decode(body)
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad request body: " + err.Error()})
		return
	}
	if !n.IsLeader() {
		if r.Header.Get(forwardedHeader) != "" {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "not the leader either"})
			return
		}
		_, addr := n.Leader()
		if addr == "" {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "no leader known"})
			return
		}
		var out map[string]string
		status, err := n.client.call(r.Context(), http.MethodPost, addr, path, body, &out, true)
		if err != nil {
			writeJSON(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, status, out)
		return
	}
	if err := fn(); err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// handleJoin adds the calling node as a member (passed on to the leader when needed).
func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) {
	var jr JoinRequest
	n.leaderOnly(w, r, pathJoin,
		func(b []byte) error {
			if err := json.Unmarshal(b, &jr); err != nil {
				return err
			}
			if jr.ID == "" || jr.RaftAddr == "" {
				return errors.New("id and raft_addr are required")
			}
			return nil
		},
		func() error {
			// Once binary entries are written, a node of an earlier build would stop on the
			// first one it applies (and stop again after every restart).
			if jr.Features&fsm.FeatureBinaryBatch == 0 && n.BinaryBatches() {
				return fmt.Errorf("%w (node %s)", ErrJoinerTooOld, jr.ID)
			}
			if jr.Features&fsm.FeatureBinarySnapshot == 0 && n.BinarySnapshots() {
				return fmt.Errorf("%w (node %s cannot restore this cluster's snapshots)", ErrJoinerTooOld, jr.ID)
			}
			err := n.addMember(jr.ID, jr.RaftAddr)
			n.audit("join", jr.ID, r, err)
			return err
		})
}

// handleRemove drops a member from the configuration (passed on to the leader when needed).
func (n *Node) handleRemove(w http.ResponseWriter, r *http.Request) {
	var rr RemoveRequest
	n.leaderOnly(w, r, pathRemove,
		func(b []byte) error {
			if err := json.Unmarshal(b, &rr); err != nil {
				return err
			}
			if rr.ID == "" {
				return errors.New("id is required")
			}
			return nil
		},
		func() error {
			err := n.removeServer(rr.ID)
			n.audit("remove", rr.ID, r, err)
			return err
		})
}

// audit logs a membership change made for a peer: who asked, what, the outcome.
func (n *Node) audit(what, id string, r *http.Request, err error) {
	result := "ok"
	if err != nil {
		result = err.Error()
	}
	n.log.Info("peer call", "audit", what, "member", id, "remote", r.RemoteAddr, "result", result)
}

// startInternal runs internalHandler on the peer port's internal connections.
func (n *Node) startInternal() {
	n.internal = &http.Server{Handler: n.internalHandler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(n.log.With("listener", "peer-internal").Handler(), slog.LevelWarn)}
	go func() {
		if err := n.internal.Serve(faultListener{n.layer.peers.internal, n.layer}); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			n.log.Error("internal peer server stopped", "err", err)
		}
	}()
}
