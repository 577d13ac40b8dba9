package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/wsregistry/wsregistry/fsm"
)

// handleJoin adds a member by its peer address (the CLI's join).
func (a *api) handleJoin(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	addr := strings.TrimSpace(r.URL.Query().Get("addr"))
	if addr == "" {
		addr = strings.TrimSpace(string(body))
	}
	if addr == "" {
		writeError(w, http.StatusBadRequest, "join needs ?addr=<peer address (--raft-addr) of the node to add>")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.MembershipTimeout)
	defer cancel()
	id, err := a.raft.AddMember(ctx, addr)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "joined", "node": id})
}

// handleLeave closes this node's agents first, so their deregistrations are written while
// it is still a member, then leaves.
func (a *api) handleLeave(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.LeaveTimeout)
	defer cancel()
	a.node.CloseAgents(ctx)
	if err := a.node.Leave(ctx); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "left", "node": a.cfg.NodeID})
	if a.cfg.OnLeft != nil {
		go a.cfg.OnLeft()
	}
}

func (a *api) handleRemove(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == a.cfg.NodeID {
		writeError(w, http.StatusBadRequest, "a node cannot remove itself: use leave")
		return
	}
	known := false
	for _, m := range a.raft.Members() {
		known = known || m.ID == id
	}
	if !known {
		writeError(w, http.StatusNotFound, "no member with id "+id)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.MembershipTimeout)
	defer cancel()
	if err := a.raft.Remove(ctx, id); err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "removed", "node": id})
}

// handleSnapshotSave streams the replicated state as of now, in the snapshot format raft
// uses (GET /v1/snapshot). It is taken from this node's state, so it works on any node.
func (a *api) handleSnapshotSave(w http.ResponseWriter, _ *http.Request) {
	body, index, err := a.raft.SaveSnapshot()
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
func (a *api) handleSnapshotRestore(w http.ResponseWriter, r *http.Request) {
	limit := a.cfg.MaxSnapshotUpload
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "reading the snapshot: "+err.Error())
		return
	}
	if int64(len(body)) > limit {
		writeError(w, http.StatusRequestEntityTooLarge, "snapshot larger than "+sizeString(limit))
		return
	}
	if err := a.raft.RestoreSnapshot(r.Context(), body); err != nil {
		status := http.StatusServiceUnavailable
		if errors.Is(err, fsm.ErrInvalid) {
			status = http.StatusBadRequest
		}
		writeError(w, status, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "restored", "applied_index": a.raft.AppliedIndex()})
}

// sizeString says a byte count the way people write limits: 1 GiB, 64 KiB, 1000 bytes.
func sizeString(n int64) string {
	for _, u := range []struct {
		size int64
		name string
	}{{1 << 30, "GiB"}, {1 << 20, "MiB"}, {1 << 10, "KiB"}} {
		if n >= u.size && n%u.size == 0 {
			return fmt.Sprintf("%d %s", n/u.size, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// handlePartition flips the fault switch: ?on=true cuts this node off from its peers (raft
// and internal calls, both directions) without touching the host's network.
func (a *api) handlePartition(w http.ResponseWriter, r *http.Request) {
	on, err := strconv.ParseBool(r.URL.Query().Get("on"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "partition needs ?on=true or ?on=false")
		return
	}
	a.raft.SetPartitioned(on)
	a.log.Warn("fault switch", "partitioned", on)
	writeJSON(w, http.StatusOK, map[string]bool{"partitioned": on})
}
