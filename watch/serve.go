package watch

import (
	"errors"
	"net/http"
	"strconv"
	"time"
)

// ServeHTTP streams events to one watcher until the client goes, a write times out, or the
// hub closes. ?index=N (or the Last-Event-ID header an EventSource sends when it reconnects)
// resumes after index N.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	after, resume, err := resumePoint(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	wt := newWatcher(after, resume)
	if !h.attach(r.Context(), wt) {
		http.Error(w, "watch stream is shutting down", http.StatusServiceUnavailable)
		return
	}
	defer h.detach(wt)

	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream; charset=utf-8")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	rc := http.NewResponseController(w)
	write := func(b []byte) bool {
		// Without a deadline a watcher that stopped reading would hold this goroutine forever.
		rc.SetWriteDeadline(time.Now().Add(h.cfg.WriteTimeout))
		if _, err := w.Write(b); err != nil {
			h.dropped.Add(1)
			return false
		}
		return true
	}
	flush := func() bool {
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			h.dropped.Add(1)
			return false
		}
		return true
	}
	// A quick reconnect after a node restart; a first line so proxies see the stream start.
	if !write([]byte("retry: 2000\n: wsregistry watch\n\n")) || !flush() {
		return
	}

	heartbeat := time.NewTimer(h.cfg.Heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-h.done:
			return
		case <-wt.wake:
			for _, f := range wt.take() {
				if !write(f.data) {
					return
				}
			}
		case <-heartbeat.C:
			if !write([]byte(": heartbeat\n\n")) {
				return
			}
		}
		if !flush() {
			return
		}
		heartbeat.Reset(h.cfg.Heartbeat)
	}
}

// resumePoint reads ?index=N, else Last-Event-ID.
func resumePoint(r *http.Request) (uint64, bool, error) {
	s := r.URL.Query().Get("index")
	if s == "" {
		s = r.Header.Get("Last-Event-ID")
	}
	if s == "" {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, false, errors.New("index must be a raft index (a non-negative integer), got " + strconv.Quote(s))
	}
	return n, true, nil
}
