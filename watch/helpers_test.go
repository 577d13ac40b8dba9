package watch

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/testutil"
)

// scaled stretches deadlines on slow machines (WSREGISTRY_TEST_SCALE=3).
func scaled(d time.Duration) time.Duration { return testutil.Scaled(d) }

func eventually(t testing.TB, within time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	testutil.Eventually(t, within, cond, msg, args...)
}

// world is a real FSM fed with encoded commands at increasing raft indexes, a hub observing it
// and an HTTP server for the stream.
type world struct {
	t     testing.TB
	f     *fsm.FSM
	hub   *Hub
	srv   *httptest.Server
	index uint64
	seq   uint64
}

func newWorld(t testing.TB, cfg Config) *world {
	t.Helper()
	w := &world{t: t, f: fsm.New()}
	w.hub = New(cfg, w.f)
	w.f.SetObserver(w.hub.Observe)
	w.srv = httptest.NewServer(w.hub)
	t.Cleanup(func() {
		w.hub.Close() // ends the streams first: httptest's Close waits for handlers
		w.srv.Close()
	})
	return w
}

func (w *world) apply(cmds ...fsm.Command) uint64 {
	w.t.Helper()
	var cmd fsm.Command = fsm.Batch{Commands: cmds}
	if len(cmds) == 1 {
		cmd = cmds[0]
	}
	data, err := fsm.Encode(cmd)
	if err != nil {
		w.t.Fatal(err)
	}
	w.index++
	for _, err := range w.f.ApplyCommand(w.index, data) {
		if err != nil {
			w.t.Fatalf("apply %T: %v", cmd, err)
		}
	}
	return w.index
}

func (w *world) session(seq uint64) fsm.SessionID {
	return fsm.SessionID{Node: "n1", Incarnation: 1, Seq: seq}
}

// register registers a new session of node n1 under ns and returns its session.
func (w *world) register(ns, host string) (fsm.SessionID, uint64) {
	w.seq++
	s := w.session(w.seq)
	idx := w.apply(fsm.Register{Reg: fsm.Registration{Namespace: ns, Address: host, Session: s, Since: 1_700_000_000_000 + int64(w.seq)}})
	return s, idx
}

// sync returns once the hub has taken and flushed (with Coalesce < 0) everything applied:
// attaching a watcher makes the worker drain its queue first.
func (w *world) sync() {
	w.t.Helper()
	wt := newWatcher(w.index, true)
	if !w.hub.attach(context.Background(), wt) {
		w.t.Fatal("hub closed")
	}
	w.hub.detach(wt)
}

// event is one parsed SSE event; a comment line is an event with Comment set.
type event struct {
	ID, Name, Data string
	Comment        string
}

func (e event) changes(t testing.TB) ChangesEvent {
	t.Helper()
	if e.Name != EventChanges {
		t.Fatalf("want a changes event, got %+v", e)
	}
	var c ChangesEvent
	if err := json.Unmarshal([]byte(e.Data), &c); err != nil {
		t.Fatal(err)
	}
	return c
}

func (e event) state(t testing.TB) StateEvent {
	t.Helper()
	if e.Name != EventState {
		t.Fatalf("want a state event, got %+v", e)
	}
	var s StateEvent
	if err := json.Unmarshal([]byte(e.Data), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// stream is one SSE client.
type stream struct {
	t      testing.TB
	resp   *http.Response
	events chan event
	cancel context.CancelFunc
}

func (w *world) watch(query string, header ...string) *stream {
	w.t.Helper()
	return dialStream(w.t, w.srv.URL+"/"+query, header...)
}

func dialStream(t testing.TB, url string, header ...string) *stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		resp.Body.Close()
		t.Fatalf("GET %s: status %d", url, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("Content-Type %q", ct)
	}
	s := &stream{t: t, resp: resp, events: make(chan event, 4096), cancel: cancel}
	go s.read()
	t.Cleanup(s.close)
	return s
}

func (s *stream) close() {
	s.cancel()
	s.resp.Body.Close()
}

func (s *stream) read() {
	defer close(s.events)
	sc := bufio.NewScanner(s.resp.Body)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var ev event
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.Name != "" || ev.Data != "" {
				s.events <- ev
			}
			ev = event{}
		case strings.HasPrefix(line, ":"):
			s.events <- event{Comment: strings.TrimSpace(line[1:])}
		default:
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimPrefix(v, " ")
			switch k {
			case "id":
				ev.ID = v
			case "event":
				ev.Name = v
			case "data":
				ev.Data += v
			}
		}
	}
}

// next returns the next event that is not a comment.
func (s *stream) next() event {
	s.t.Helper()
	timeout := time.After(scaled(5 * time.Second))
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				s.t.Fatal("stream ended")
			}
			if ev.Comment != "" {
				continue
			}
			return ev
		case <-timeout:
			s.t.Fatal("no event within 5s")
		}
	}
}

// none checks that no event (other than comments) arrives within d.
func (s *stream) none(d time.Duration) {
	s.t.Helper()
	timeout := time.After(d)
	for {
		select {
		case ev, ok := <-s.events:
			if !ok {
				return
			}
			if ev.Comment == "" {
				s.t.Fatalf("unexpected event %+v", ev)
			}
		case <-timeout:
			return
		}
	}
}

func ns(i int) string { return fmt.Sprintf("svc-%03d", i) }
