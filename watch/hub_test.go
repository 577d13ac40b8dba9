package watch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
)

func TestWatch_FreshWatcherGetsStateThenChanges(t *testing.T) {
	w := newWorld(t, Config{Coalesce: 10 * time.Millisecond})
	s1, _ := w.register("users", "10.0.0.7:9001")
	w.apply(fsm.SetNode{Meta: fsm.NodeMeta{ID: "n1", HTTPAddr: "10.0.0.2:8428", Incarnation: 1}})

	st := w.watch("").next().state(t)
	if st.Index != w.index {
		t.Fatalf("state index %d, want %d", st.Index, w.index)
	}
	if len(st.Namespaces) != 1 || st.Namespaces[0].Name != "users" || len(st.Namespaces[0].Instances) != 1 {
		t.Fatalf("state namespaces %+v", st.Namespaces)
	}
	if in := st.Namespaces[0].Instances[0]; in.Host != "10.0.0.7:9001" || in.Session != s1.String() || in.Node != "n1" || in.Since.UnixMilli() != 1_700_000_000_001 {
		t.Fatalf("instance %+v", in)
	}
	if len(st.Nodes) != 1 || st.Nodes[0].HTTPAddr != "10.0.0.2:8428" {
		t.Fatalf("state nodes %+v", st.Nodes)
	}
}

func TestWatch_ChangesCarryIndexAndDetails(t *testing.T) {
	w := newWorld(t, Config{Coalesce: 10 * time.Millisecond})
	s := w.watch("")
	s.next().state(t)

	sess, regIdx := w.register("users", "10.0.0.7:9001")
	ev := s.next()
	c := ev.changes(t)
	if ev.ID != strconv.FormatUint(regIdx, 10) || c.Index != regIdx || len(c.Changes) != 1 {
		t.Fatalf("event id %q, %+v; want index %d", ev.ID, c, regIdx)
	}
	got := c.Changes[0]
	if got.Kind != "register" || got.Index != regIdx || got.Namespace != "users" || got.Host != "10.0.0.7:9001" ||
		got.Session != sess.String() || got.Node != "n1" || got.Since == nil || got.Since.UnixMilli() != 1_700_000_000_001 {
		t.Fatalf("register change %+v", got)
	}

	deregIdx := w.apply(fsm.Deregister{Session: sess})
	c = s.next().changes(t)
	if len(c.Changes) != 1 || c.Changes[0].Kind != "deregister" || c.Changes[0].Index != deregIdx || c.Changes[0].Host != "10.0.0.7:9001" {
		t.Fatalf("deregister %+v", c)
	}

	nodeIdx := w.apply(fsm.SetNode{Meta: fsm.NodeMeta{ID: "n2", WSAddr: "10.0.0.3:8427", HTTPAddr: "10.0.0.3:8428", Incarnation: 4}})
	c = s.next().changes(t)
	if len(c.Changes) != 1 || c.Changes[0].Kind != "node" || c.Changes[0].Index != nodeIdx || c.Changes[0].Meta == nil || c.Changes[0].Meta.HTTPAddr != "10.0.0.3:8428" {
		t.Fatalf("node change %+v", c)
	}
	w.apply(fsm.RemoveNode{Node: "n2"})
	if c = s.next().changes(t); c.Changes[0].Kind != "node-removed" || c.Changes[0].Node != "n2" {
		t.Fatalf("node-removed %+v", c)
	}
}

func TestWatch_CoalescesChangesOverTheWindow(t *testing.T) {
	w := newWorld(t, Config{Coalesce: 300 * time.Millisecond})
	s := w.watch("")
	s.next().state(t)

	first := w.index + 1
	start := time.Now()
	for i := range 20 {
		w.register(ns(i), "10.0.0.7:9001")
	}
	ev := s.next()
	took := time.Since(start)
	c := ev.changes(t)
	if len(c.Changes) != 20 {
		t.Fatalf("one event should hold all 20 changes, got %d (took %v)", len(c.Changes), took)
	}
	for i, ch := range c.Changes {
		if ch.Index != first+uint64(i) {
			t.Fatalf("change %d has index %d, want %d", i, ch.Index, first+uint64(i))
		}
	}
	if c.Index != w.index || ev.ID != strconv.FormatUint(w.index, 10) {
		t.Fatalf("event index %d id %q, want %d", c.Index, ev.ID, w.index)
	}
	if took < 250*time.Millisecond {
		t.Fatalf("event came after %v, before the 300ms window closed", took)
	}
	s.none(400 * time.Millisecond)

	// Without coalescing every entry is its own event.
	w2 := newWorld(t, Config{Coalesce: -1})
	s2 := w2.watch("")
	s2.next().state(t)
	w2.register("a", "10.0.0.7:9001")
	w2.register("b", "10.0.0.7:9001")
	got := 0
	for got < 2 {
		got += len(s2.next().changes(t).Changes)
	}
}

func TestWatch_ResumeInsideHistoryReplaysMissedChanges(t *testing.T) {
	w := newWorld(t, Config{Coalesce: 5 * time.Millisecond})
	s := w.watch("")
	s.next().state(t)
	_, idx := w.register("a", "10.0.0.7:9001")
	last := s.next()
	if last.ID != strconv.FormatUint(idx, 10) {
		t.Fatalf("id %q want %d", last.ID, idx)
	}
	s.close()

	// Missed while away: two registrations and a deregistration.
	sb, _ := w.register("b", "10.0.0.8:9001")
	w.register("c", "10.0.0.9:9001")
	w.apply(fsm.Deregister{Session: sb})

	for _, how := range []struct {
		name   string
		query  string
		header []string
	}{
		{"query", "?index=" + last.ID, nil},
		{"Last-Event-ID", "", []string{"Last-Event-ID", last.ID}},
	} {
		t.Run(how.name, func(t *testing.T) {
			missed := w.index
			r := w.watch(how.query, how.header...)
			var kinds []string
			for got := uint64(0); got < missed; {
				for _, c := range r.next().changes(t).Changes {
					if c.Index <= idx {
						t.Fatalf("replayed change %+v at or before the resume index %d", c, idx)
					}
					got = c.Index
					kinds = append(kinds, c.Kind+":"+c.Namespace)
				}
			}
			if want := "register:b register:c deregister:b"; !strings.HasPrefix(strings.Join(kinds, " "), want) {
				t.Fatalf("replayed %v, want %s first", kinds, want)
			}
			r.none(100 * time.Millisecond)
			// And the stream goes on live.
			w.register("d-"+how.name, "10.0.0.7:9001")
			if c := r.next().changes(t); c.Changes[0].Namespace != "d-"+how.name {
				t.Fatalf("live change after resume %+v", c)
			}
		})
	}

	// Resuming at the current index: nothing missed, nothing sent.
	r := w.watch("?index=" + strconv.FormatUint(w.index, 10))
	r.none(150 * time.Millisecond)
}

func TestWatch_ResumeOutsideHistoryGetsFullState(t *testing.T) {
	w := newWorld(t, Config{Coalesce: -1, History: 4})
	for i := range 20 {
		w.register(ns(i), "10.0.0.7:9001")
		w.sync() // one event per entry, so the history holds exactly the last 4
	}

	for _, q := range []string{"?index=1", "?index=0", "?index=999999"} { // too old, too old, from the future
		t.Run(q, func(t *testing.T) {
			s := w.watch(q)
			st := s.next().state(t)
			if st.Index != w.index || len(st.Namespaces) != 20 {
				t.Fatalf("state at %d with %d namespaces; want %d and 20", st.Index, len(st.Namespaces), w.index)
			}
		})
	}
	// Just inside the history: the last 4 changes, no state.
	s := w.watch("?index=" + strconv.FormatUint(w.index-4, 10))
	n := 0
	for n < 4 {
		n += len(s.next().changes(t).Changes)
	}
	if n != 4 {
		t.Fatalf("replayed %d changes, want 4", n)
	}
}

func TestWatch_BadIndexIs400(t *testing.T) {
	w := newWorld(t, Config{})
	resp, err := http.Get(w.srv.URL + "/?index=abc")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "raft index") {
		t.Fatalf("status %d body %q", resp.StatusCode, body)
	}
}

func TestWatch_HeartbeatCommentsKeepIdleStreamsAlive(t *testing.T) {
	w := newWorld(t, Config{Heartbeat: 50 * time.Millisecond})
	s := w.watch("")
	s.next().state(t)
	beats := 0
	timeout := time.After(scaled(3 * time.Second))
	for beats < 3 {
		select {
		case ev := <-s.events:
			if ev.Comment == "heartbeat" {
				beats++
			} else if ev.Comment == "" {
				t.Fatalf("unexpected event on an idle stream: %+v", ev)
			}
		case <-timeout:
			t.Fatalf("%d heartbeats in 3s, want 3 at 50ms", beats)
		}
	}
}

func TestWatch_RestoreSendsEveryoneTheState(t *testing.T) {
	w := newWorld(t, Config{Coalesce: 5 * time.Millisecond})
	w.register("a", "10.0.0.7:9001")
	snap, err := w.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := snap.Persist(&sink{&buf}); err != nil {
		t.Fatal(err)
	}
	w.register("b", "10.0.0.7:9001")
	s := w.watch("")
	if st := s.next().state(t); len(st.Namespaces) != 2 {
		t.Fatalf("state before restore %+v", st)
	}
	if err := w.f.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
	st := s.next().state(t)
	if len(st.Namespaces) != 1 || st.Namespaces[0].Name != "a" {
		t.Fatalf("state after restore %+v", st)
	}
}

type sink struct{ *bytes.Buffer }

func (s *sink) ID() string    { return "test" }
func (s *sink) Cancel() error { return nil }
func (s *sink) Close() error  { return nil }

func TestWatch_ClusterEventsOnlyWhenTheViewChanges(t *testing.T) {
	var leader atomic.Value
	leader.Store("n1")
	w := newWorld(t, Config{ClusterPoll: 20 * time.Millisecond, Cluster: func() any {
		return map[string]string{"leader": leader.Load().(string)}
	}})
	s := w.watch("")
	st := s.next().state(t)
	if string(st.Cluster) != `{"leader":"n1"}` {
		t.Fatalf("state cluster %s", st.Cluster)
	}
	s.none(150 * time.Millisecond) // several polls, no change, no event

	leader.Store("n2")
	w.hub.ClusterChanged()
	ev := s.next()
	if ev.Name != EventCluster || ev.ID != "" {
		t.Fatalf("want a cluster event without an id, got %+v", ev)
	}
	var ce ClusterEvent
	if err := json.Unmarshal([]byte(ev.Data), &ce); err != nil || string(ce.Cluster) != `{"leader":"n2"}` {
		t.Fatalf("cluster event %s (%v)", ev.Data, err)
	}
	// A resumed watcher hears the current view too.
	r := w.watch("?index=" + strconv.FormatUint(w.index, 10))
	if ev := r.next(); ev.Name != EventCluster || !strings.Contains(ev.Data, `"n2"`) {
		t.Fatalf("resumed watcher got %+v", ev)
	}
}

func TestWatch_SlowWatcherDoesNotBlockApplyAndIsResynced(t *testing.T) {
	w := newWorld(t, Config{Coalesce: -1, QueueFrames: 4})
	slow := newWatcher(0, false)
	if !w.hub.attach(t.Context(), slow) {
		t.Fatal("attach")
	}
	eventually(t, 2*time.Second, func() bool { slow.mu.Lock(); defer slow.mu.Unlock(); return len(slow.q) == 1 }, "no state queued")

	// Nobody reads this watcher. Apply (which calls the observer) must not wait for it: if it
	// did, this loop would never finish.
	start := time.Now()
	var worst time.Duration
	applied := make(chan struct{})
	go func() {
		defer close(applied)
		for i := range 2000 {
			t0 := time.Now()
			w.register(ns(i%50), fmt.Sprintf("10.0.%d.%d:9001", i/250, i%250))
			worst = max(worst, time.Since(t0))
		}
	}()
	select {
	case <-applied:
	case <-time.After(scaled(20 * time.Second)):
		t.Fatal("2000 applies did not finish in 20s with a stuck watcher: the observer blocks")
	}
	t.Logf("2000 applies with a stuck watcher: %v total, worst single apply %v", time.Since(start), worst)
	// The worker drains whatever is queued at once, so on a busy machine the 2000 changes
	// may have left in a frame or two, not overflowing the queue. Then feed it one change
	// at a time, each its own frame, until the slow watcher's queue overflows.
	queued := func() int { slow.mu.Lock(); defer slow.mu.Unlock(); return len(slow.q) }
	for i := 0; w.hub.Stats().Resyncs == 0; i++ {
		if i == 10 {
			t.Fatalf("10 frames past the limit of 4: the slow watcher was never resynced")
		}
		before := queued()
		w.register(ns(i), fmt.Sprintf("10.9.0.%d:9001", i))
		eventually(t, 5*time.Second, func() bool { return w.hub.Stats().Resyncs >= 1 || queued() != before },
			"change %d never reached the slow watcher", i)
	}
	// What it is handed once it reads again: the full state, then changes, up to the end.
	eventually(t, 5*time.Second, func() bool {
		slow.mu.Lock()
		defer slow.mu.Unlock()
		if len(slow.q) == 0 || !bytes.Contains(slow.q[0].data, []byte("event: state")) {
			return false
		}
		last := slow.q[len(slow.q)-1].data
		return bytes.HasPrefix(last, []byte("id: "+strconv.FormatUint(w.index, 10)+"\n"))
	}, "the slow watcher's queue is not a full state followed by changes up to index %d", w.index)
	slow.mu.Lock()
	if len(slow.q) > 4 {
		t.Fatalf("slow watcher holds %d frames, limit 4", len(slow.q))
	}
	slow.mu.Unlock()
	w.hub.detach(slow)
}

// TestWatch_StuckConnectionIsCutOff: a client that stops reading fills the socket buffers;
// the write deadline ends its stream instead of holding a goroutine and memory forever.
func TestWatch_StuckConnectionIsCutOff(t *testing.T) {
	w := newWorld(t, Config{Coalesce: -1, QueueFrames: 8, WriteTimeout: 200 * time.Millisecond})
	conn, err := net.Dial("tcp", w.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096)
	}
	fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	eventually(t, 2*time.Second, func() bool { return w.hub.Stats().Watchers == 1 }, "watcher not attached")
	long := strings.Repeat("x", 200)
	for i := 0; w.hub.Stats().Dropped == 0; i++ {
		if i > 2000 {
			t.Fatalf("a watcher that never reads was not cut off after %d big entries: %+v", i, w.hub.Stats())
		}
		// Big change events, but a small state: register 100 long names, then drop them.
		var cmds []fsm.Command
		var sessions []fsm.SessionID
		for j := range 100 {
			w.seq++
			sessions = append(sessions, w.session(w.seq))
			cmds = append(cmds, fsm.Register{Reg: fsm.Registration{Namespace: long + strconv.Itoa(j), Address: "10.0.0.7:9001", Session: w.session(w.seq), Since: 1}})
		}
		w.apply(cmds...)
		cmds = cmds[:0]
		for _, s := range sessions {
			cmds = append(cmds, fsm.Deregister{Session: s})
		}
		w.apply(cmds...)
		time.Sleep(time.Millisecond)
	}
	eventually(t, 5*time.Second, func() bool { return w.hub.Stats().Watchers == 0 }, "cut-off watcher still attached")
}

func TestWatch_ThousandWatchersCostOneEncodingPerChange(t *testing.T) {
	const n = 1000
	w := newWorld(t, Config{Coalesce: 5 * time.Millisecond})
	w.register("before", "10.0.0.7:9001")

	// Fresh watchers connecting together while nothing changes share one full-state encoding.
	before := w.hub.Stats()
	streams := make([]*stream, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := dialStream(t, w.srv.URL+"/")
			mu.Lock()
			streams[i] = s
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, s := range streams {
		s.next().state(t)
	}
	mid := w.hub.Stats()
	if mid.Watchers != n {
		t.Fatalf("%d watchers attached, want %d", mid.Watchers, n)
	}
	if got := mid.StateFrames - before.StateFrames; got != 1 {
		t.Fatalf("%d full-state encodings for %d watchers of an unchanged state, want 1", got, n)
	}

	_, idx := w.register("after", "10.0.0.8:9001")
	for i, s := range streams {
		c := s.next().changes(t)
		if c.Index != idx || c.Changes[0].Namespace != "after" {
			t.Fatalf("watcher %d got %+v", i, c)
		}
	}
	after := w.hub.Stats()
	if got := after.Frames - mid.Frames; got != 1 {
		t.Fatalf("one change to %d watchers was encoded %d times, want 1", n, got)
	}
	t.Logf("%d watchers: %d state encoding(s), %d change encoding(s)", n, mid.StateFrames-before.StateFrames, after.Frames-mid.Frames)
}
