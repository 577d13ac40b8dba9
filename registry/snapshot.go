package registry

import (
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/fsm"
)

// handleSnapshotSave streams the replicated state as of now, in the snapshot format raft
// uses (GET /v1/snapshot). It is taken from this node's state, so it works on any node.
func (n *Node) handleSnapshotSave(w http.ResponseWriter, _ *http.Request) {
	body, index, err := n.raft.SaveSnapshot()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "snapshot: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.Header().Set("X-Wsregistry-Snapshot-Index", strconv.FormatUint(index, 10))
	w.Write(body)
}

// handleSnapshotRestore replaces the whole cluster's state with an uploaded snapshot
// (POST /v1/snapshot). It is checked first, then restored through the leader; every node
// then reconciles the state with the agents actually connected to it.
func (n *Node) handleSnapshotRestore(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, cluster.MaxSnapshotUpload+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "reading the snapshot: "+err.Error())
		return
	}
	if len(body) > cluster.MaxSnapshotUpload {
		writeError(w, http.StatusRequestEntityTooLarge, "snapshot larger than 1 GiB")
		return
	}
	if err := n.raft.RestoreSnapshot(r.Context(), body); err != nil {
		status := http.StatusServiceUnavailable
		if errors.Is(err, fsm.ErrInvalid) {
			status = http.StatusBadRequest
		}
		writeError(w, status, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "restored", "applied_index": n.raft.AppliedIndex()})
}
