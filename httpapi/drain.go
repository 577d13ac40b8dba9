package httpapi

import (
	"context"
	"net/http"
	"strconv"
)

// sessionCounter is optional on State (*fsm.FSM): agent sessions per member for /v1/cluster.
type sessionCounter interface {
	SessionCounts() map[string]int
}

// handleDrain starts the node's drain (POST /v1/drain), or ends it with ?cancel=true. It
// answers at once with the progress; GET /v1/drain follows it until "done".
func (a *api) handleDrain(w http.ResponseWriter, r *http.Request) {
	cancel := false
	if v := r.URL.Query().Get("cancel"); v != "" {
		var err error
		if cancel, err = strconv.ParseBool(v); err != nil {
			writeError(w, http.StatusBadRequest, "drain: ?cancel must be true or false")
			return
		}
	}
	ctx, stop := context.WithTimeout(r.Context(), a.cfg.MembershipTimeout)
	defer stop()
	st, err := a.cfg.Drain(ctx, cancel)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *api) handleDrainStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.cfg.DrainStatus())
}
