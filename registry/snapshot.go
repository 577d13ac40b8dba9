package registry

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/hashicorp/raft"

	"github.com/wsregistry/wsregistry/fsm"
)

// maxSnapshotUpload bounds a restore body; 100,000 registrations take about 7 MB.
const maxSnapshotUpload = 1 << 30

// handleSnapshotSave streams the replicated state as of now, in the snapshot format raft
// uses (GET /v1/snapshot). It is taken from this node's state, so it works on any node.
func (n *Node) handleSnapshotSave(w http.ResponseWriter, _ *http.Request) {
	index := n.state.AppliedIndex()
	snap, err := n.state.Snapshot()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "snapshot: "+err.Error())
		return
	}
	defer snap.Release()
	sink := &bufferSink{}
	if err := snap.Persist(sink); err != nil {
		writeError(w, http.StatusInternalServerError, "snapshot: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(sink.Len()))
	w.Header().Set("X-Wsregistry-Snapshot-Index", strconv.FormatUint(index, 10))
	w.Write(sink.Bytes())
}

// bufferSink collects a snapshot in memory.
type bufferSink struct{ bytes.Buffer }

func (*bufferSink) ID() string    { return "api" }
func (*bufferSink) Cancel() error { return nil }
func (*bufferSink) Close() error  { return nil }

// handleSnapshotRestore replaces the whole cluster's state with an uploaded snapshot
// (POST /v1/snapshot). It is checked first, then restored through the leader; every node
// then reconciles the state with the agents actually connected to it.
func (n *Node) handleSnapshotRestore(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxSnapshotUpload+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "reading the snapshot: "+err.Error())
		return
	}
	if len(body) > maxSnapshotUpload {
		writeError(w, http.StatusRequestEntityTooLarge, "snapshot larger than 1 GiB")
		return
	}
	scratch := fsm.New()
	if err := scratch.Restore(io.NopCloser(bytes.NewReader(body))); err != nil {
		writeError(w, http.StatusBadRequest, "not a snapshot this version can restore: "+err.Error())
		return
	}
	if !n.raft.IsLeader() {
		n.proxyToLeader(w, r, body)
		return
	}
	// The upload's index is its old cluster's: rebased to ours, so applied-index waits
	// (read-your-write) and the index headers stay true.
	scratch.Rebase(n.raft.AppliedIndex())
	snap, err := scratch.Snapshot()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "restore: "+err.Error())
		return
	}
	sink := &bufferSink{}
	if err := snap.Persist(sink); err != nil {
		writeError(w, http.StatusInternalServerError, "restore: "+err.Error())
		return
	}
	body = sink.Bytes()
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Size: int64(len(body))}
	if err := n.raft.Raft().Restore(meta, bytes.NewReader(body), n.cfg.CommitWait); err != nil {
		writeError(w, http.StatusServiceUnavailable, "restore: "+err.Error())
		return
	}
	n.log.Warn("state restored from an uploaded snapshot", "bytes", len(body))
	writeJSON(w, http.StatusOK, map[string]any{"status": "restored", "applied_index": n.raft.AppliedIndex()})
}

// proxyToLeader sends an admin request on to the leader, with the caller's credentials.
func (n *Node) proxyToLeader(w http.ResponseWriter, r *http.Request, body []byte) {
	leader, err := n.raft.LeaderHTTP()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, n.client.Scheme+"://"+leader+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	req.Header.Set("Authorization", r.Header.Get("Authorization"))
	resp, err := n.client.HTTP.Do(req)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Sprintf("leader %s: %v", leader, err))
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}
