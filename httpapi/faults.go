package httpapi

import (
	"net/http"
	"strconv"
)

// DiskFaulter is the blocked-disk switch (*cluster.Node, with fault injection on).
type DiskFaulter interface {
	SetDiskBlocked(on bool) error
}

// handleDisk flips the blocked-disk switch: ?blocked=true makes this node's raft log writes
// hang, as on a disk that stopped answering, while everything else keeps running.
func (a *api) handleDisk(w http.ResponseWriter, r *http.Request) {
	on, err := strconv.ParseBool(r.URL.Query().Get("blocked"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "disk needs ?blocked=true or ?blocked=false")
		return
	}
	d, ok := a.raft.(DiskFaulter)
	if !ok {
		writeError(w, http.StatusNotImplemented, "this node's cluster has no disk fault switch")
		return
	}
	if err := d.SetDiskBlocked(on); err != nil {
		writeError(w, http.StatusConflict, err.Error())
		return
	}
	a.log.Warn("fault switch", "disk_blocked", on)
	writeJSON(w, http.StatusOK, map[string]bool{"blocked": on})
}
