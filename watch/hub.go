// Package watch streams the registry's changes to many watchers as Server-Sent Events.
//
// The FSM's observer runs inside raft's apply path, so Observe only appends to a queue. One
// worker goroutine coalesces what was queued over a short window, encodes each batch ONCE into
// an SSE frame and hands the same bytes to every watcher. A bounded history of batches lets a
// watcher resume after an index; one that is too far behind (or that resumes from before the
// history) gets one full-state event instead, never an error. See DESIGN.md for the format.
package watch

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
)

// State is what the hub reads to build full-state events and to complete change events
// (registration time, node addresses). *fsm.FSM implements it.
type State interface {
	AppliedIndex() uint64
	Namespaces() []fsm.NamespaceView
	Nodes() []fsm.NodeMeta
	Node(id string) (fsm.NodeMeta, bool)
	Instances(ns string) []fsm.Registration
}

// Defaults of Config, shared with the flags of cmd/wsregistry.
const (
	DefaultCoalesce  = 50 * time.Millisecond
	DefaultHeartbeat = 15 * time.Second
	DefaultHistory   = 8192
)

// Config tunes the hub. Zero values take the defaults in brackets.
type Config struct {
	// Coalesce is how long changes are collected before one event goes out [50ms].
	// Negative: send every applied entry at once.
	Coalesce time.Duration
	// Heartbeat is the idle time after which a comment line is sent, so proxies and load
	// balancers keep the stream open [15s].
	Heartbeat time.Duration
	// History is how many changes are kept for resuming with ?index= [8192].
	History int
	// QueueFrames is how many events may wait for one watcher; a watcher that falls further
	// behind has its queue dropped and gets a full-state event instead [64].
	QueueFrames int
	// WriteTimeout bounds one write to a watcher; a watcher that cannot take it is cut off [10s].
	WriteTimeout time.Duration
	// ClusterPoll is how often Cluster is re-read to notice membership changes nothing
	// announces on this node (a follower learns of them only through raft) [1s].
	ClusterPoll time.Duration
	// MaxInbound bounds the changes queued between raft's apply loop and the worker; past it
	// they are dropped and every watcher is resynchronised from the full state [1,000,000].
	MaxInbound int
	// Cluster returns the cluster view sent in "cluster" and "state" events (JSON-encodable).
	// It must not include values that change all the time (last contact): every change of
	// its encoding is an event. Nil: no cluster events.
	Cluster func() any
	Logger  *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Coalesce == 0 {
		c.Coalesce = DefaultCoalesce
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.History <= 0 {
		c.History = DefaultHistory
	}
	if c.QueueFrames <= 0 {
		c.QueueFrames = 64
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.ClusterPoll <= 0 {
		c.ClusterPoll = time.Second
	}
	if c.MaxInbound <= 0 {
		c.MaxInbound = 1_000_000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats counts what the hub did, for tests and metrics.
type Stats struct {
	Watchers    int64  // connected now
	Frames      uint64 // events encoded (changes, state, cluster), whatever the number of watchers
	StateFrames uint64 // of which full-state events
	Resyncs     uint64 // watchers whose queue overflowed and who were sent the full state
	Dropped     uint64 // watchers cut off because a write timed out or failed
}

// observed is one Observe call: the changes one raft entry made.
type observed struct {
	index   uint64
	changes []fsm.Change
}

// frame is one encoded SSE event, shared by every watcher it is sent to.
type frame struct {
	data []byte
}

// batch is one coalesced "changes" event: entries min..max (inclusive, by raft index).
type batch struct {
	min, max uint64
	changes  []Change
	frame    *frame
}

// Hub fans changes out to watchers. Create it with New, feed it with Observe (the FSM
// observer) and ClusterChanged, serve it with ServeHTTP, stop it with Close.
type Hub struct {
	cfg   Config
	state State
	log   *slog.Logger

	inMu       sync.Mutex
	in         []observed
	inChanges  int
	inOverflow bool
	inWake     chan struct{}

	clusterWake chan struct{}
	subs        chan *watcher
	unsubs      chan *watcher
	done        chan struct{}
	closeOnce   sync.Once
	wg          sync.WaitGroup

	watchers    atomic.Int64
	frames      atomic.Uint64
	stateFrames atomic.Uint64
	resyncs     atomic.Uint64
	dropped     atomic.Uint64

	// Owned by the worker goroutine.
	ws           map[*watcher]struct{}
	needState    map[*watcher]struct{}
	lastObserved uint64 // highest index seen from Observe
	lastFlushed  uint64 // highest index of a sent changes event (or of the last reset)
	floor        uint64 // Observe calls at or below this are already in a state the hub reset to
	historyFrom  uint64 // every change after this index is in history
	history      []*batch
	histChanges  int
	pending      []Change
	clusterJSON  []byte // last cluster view sent
	clusterFrame *frame
	clusterDirty bool
	resetAll     bool
	stateCache   *frame // full state at stateIndex, reused until anything changes
	stateIndex   uint64
}

// New starts a hub over st. The caller sets h.Observe as the FSM's observer.
func New(cfg Config, st State) *Hub {
	cfg.setDefaults()
	h := &Hub{
		cfg: cfg, state: st, log: cfg.Logger,
		inWake: make(chan struct{}, 1), clusterWake: make(chan struct{}, 1),
		subs: make(chan *watcher), unsubs: make(chan *watcher), done: make(chan struct{}),
		ws: map[*watcher]struct{}{}, needState: map[*watcher]struct{}{},
	}
	h.historyFrom = st.AppliedIndex()
	h.lastObserved, h.lastFlushed, h.floor = h.historyFrom, h.historyFrom, h.historyFrom
	h.clusterDirty = cfg.Cluster != nil
	h.wg.Add(1)
	go h.run()
	return h
}

// Observe queues the changes of one applied raft entry. It never blocks on watchers: it is
// called synchronously from raft's apply loop.
func (h *Hub) Observe(index uint64, changes []fsm.Change) {
	h.inMu.Lock()
	switch {
	case h.inOverflow:
	case h.inChanges+len(changes) > h.cfg.MaxInbound:
		// The worker is far behind: drop the queue and let it resynchronise everyone from
		// the state, rather than hold an unbounded amount here.
		h.in, h.inChanges, h.inOverflow = nil, 0, true
	default:
		h.in = append(h.in, observed{index: index, changes: changes})
		h.inChanges += len(changes)
	}
	h.inMu.Unlock()
	select {
	case h.inWake <- struct{}{}:
	default:
	}
}

// ClusterChanged says the cluster view may have changed (a leader change, a member joined).
// It never blocks.
func (h *Hub) ClusterChanged() {
	select {
	case h.clusterWake <- struct{}{}:
	default:
	}
}

// Stats returns the counters.
func (h *Hub) Stats() Stats {
	return Stats{
		Watchers: h.watchers.Load(), Frames: h.frames.Load(), StateFrames: h.stateFrames.Load(),
		Resyncs: h.resyncs.Load(), Dropped: h.dropped.Load(),
	}
}

// Close ends every stream and stops the worker.
func (h *Hub) Close() {
	h.closeOnce.Do(func() { close(h.done) })
	h.wg.Wait()
}

func (h *Hub) run() {
	defer h.wg.Done()
	var (
		timer  *time.Timer
		timerC <-chan time.Time
	)
	poll := time.NewTicker(h.cfg.ClusterPoll)
	defer poll.Stop()
	for {
		select {
		case <-h.done:
			if timer != nil {
				timer.Stop()
			}
			return
		case <-h.inWake:
			h.drainInbound()
		case <-timerC:
			timerC = nil
			h.flush()
		case w := <-h.subs:
			h.drainInbound()
			h.subscribe(w)
			// Take every subscriber that is already waiting, so a reconnect storm shares
			// one full-state encoding.
			for more := true; more; {
				select {
				case w := <-h.subs:
					h.subscribe(w)
				default:
					more = false
				}
			}
		case w := <-h.unsubs:
			delete(h.ws, w)
			delete(h.needState, w)
		case <-h.clusterWake:
			h.clusterDirty = h.cfg.Cluster != nil
		case <-poll.C:
			h.clusterDirty = h.cfg.Cluster != nil
		}
		if h.resetAll {
			h.reset()
		}
		if len(h.pending) > 0 && timerC == nil {
			if h.cfg.Coalesce < 0 {
				h.flush()
			} else {
				if timer == nil {
					timer = time.NewTimer(h.cfg.Coalesce)
				} else {
					timer.Reset(h.cfg.Coalesce)
				}
				timerC = timer.C
			}
		}
		// A cluster change goes out after the changes in flight, so it never describes
		// a member the watcher has not heard of yet.
		if h.clusterDirty && len(h.pending) == 0 {
			h.checkCluster()
		}
		if len(h.needState) > 0 {
			h.sendState()
		}
	}
}

// drainInbound moves what Observe queued into pending.
func (h *Hub) drainInbound() {
	h.inMu.Lock()
	in, overflow := h.in, h.inOverflow
	h.in, h.inChanges, h.inOverflow = nil, 0, false
	h.inMu.Unlock()
	if overflow {
		h.log.Warn("watch: change queue overflowed; resynchronising every watcher from the full state")
		h.resetAll = true
		return
	}
	for _, o := range in {
		if o.index <= h.floor {
			continue // already part of the state everyone was reset to
		}
		h.lastObserved = max(h.lastObserved, o.index)
		for _, c := range o.changes {
			switch c.Kind {
			case fsm.ChangeReset:
				// Restore replaced the state: history no longer leads to it.
				h.resetAll = true
				return
			case fsm.ChangeNode, fsm.ChangeNodeRemoved:
				h.clusterDirty = h.cfg.Cluster != nil
			}
			h.pending = append(h.pending, Change{
				Index: o.index, Kind: string(c.Kind), Namespace: c.Namespace, Host: c.Address,
				Node: c.Node, Session: c.Session,
			})
		}
	}
}

// reset drops history and pending changes and sends everyone the full state; what Observe
// queued up to that state's index is skipped.
func (h *Hub) reset() {
	h.resetAll = false
	h.pending = nil
	h.history, h.histChanges = nil, 0
	h.stateCache = nil
	f, idx := h.buildState()
	h.historyFrom, h.lastFlushed, h.floor = idx, idx, idx
	h.lastObserved = max(h.lastObserved, idx)
	for w := range h.ws {
		h.needState[w] = struct{}{}
	}
	h.deliverState(f, idx)
}

// flush encodes pending changes once and hands the frame to every watcher.
func (h *Hub) flush() {
	if len(h.pending) == 0 {
		return
	}
	b := &batch{min: h.pending[0].Index, max: h.pending[len(h.pending)-1].Index, changes: h.pending}
	h.pending = nil
	h.complete(b.changes)
	b.frame = h.encodeChanges(b.max, b.changes)
	h.history = append(h.history, b)
	h.histChanges += len(b.changes)
	for h.histChanges > h.cfg.History && len(h.history) > 1 {
		old := h.history[0]
		h.history[0] = nil
		h.history = h.history[1:]
		h.histChanges -= len(old.changes)
		h.historyFrom = old.max
	}
	h.lastFlushed = b.max
	// The state cache stays: sendState rebuilds it only when the applied index moved, and a
	// state built after these changes were applied already holds them.
	for w := range h.ws {
		h.deliver(w, b)
	}
}

// complete fills in what a raft change does not carry: the registration time and a node's
// addresses, read from the current state (one lookup per namespace per batch). A registration
// already gone has no time; its deregistration follows.
func (h *Hub) complete(changes []Change) {
	since := map[string]map[string]int64{} // ns -> session -> unix ms
	for i := range changes {
		c := &changes[i]
		switch fsm.ChangeKind(c.Kind) {
		case fsm.ChangeRegister:
			m, ok := since[c.Namespace]
			if !ok {
				m = map[string]int64{}
				for _, r := range h.state.Instances(c.Namespace) {
					m[r.Session.String()] = r.Since
				}
				since[c.Namespace] = m
			}
			if ms, ok := m[c.Session]; ok {
				t := time.UnixMilli(ms).UTC()
				c.Since = &t
			}
		case fsm.ChangeNode:
			if meta, ok := h.state.Node(c.Node); ok {
				c.Meta = &meta
			}
		}
	}
}

// deliver queues b for w, skipping the changes w already has (those at or below w.after).
func (h *Hub) deliver(w *watcher, b *batch) {
	switch {
	case b.max <= w.after:
	case b.min > w.after:
		h.enqueue(w, b.frame)
	default:
		// Only a watcher that just received a state or resumed mid-batch gets here.
		i, _ := slices.BinarySearchFunc(b.changes, w.after+1, func(c Change, idx uint64) int { return cmp.Compare(c.Index, idx) })
		h.enqueue(w, h.encodeChanges(b.max, b.changes[i:]))
	}
}

func (h *Hub) enqueue(w *watcher, f *frame) {
	w.mu.Lock()
	switch {
	case w.resync:
	case len(w.q) >= h.cfg.QueueFrames:
		// Too far behind: forget what is queued and send the whole state once it can take it.
		w.q, w.resync = nil, true
		h.needState[w] = struct{}{}
		h.resyncs.Add(1)
	default:
		w.q = append(w.q, f)
	}
	w.mu.Unlock()
	w.signal()
}

// subscribe starts w: the missed changes when history still holds them, else the full state.
func (h *Hub) subscribe(w *watcher) {
	h.ws[w] = struct{}{}
	h.watchers.Add(1)
	if !w.resume || w.after < h.historyFrom || w.after > h.lastObserved {
		w.mu.Lock()
		w.resync = true
		w.mu.Unlock()
		h.needState[w] = struct{}{}
		return
	}
	i, _ := slices.BinarySearchFunc(h.history, w.after+1, func(b *batch, idx uint64) int {
		if b.max < idx {
			return -1
		}
		return 1
	})
	for _, b := range h.history[i:] {
		h.deliver(w, b)
	}
	if h.clusterFrame != nil {
		h.enqueue(w, h.clusterFrame)
	}
	w.signal()
}

// sendState gives every watcher that needs it the full state, encoded once for all of them.
func (h *Hub) sendState() {
	f, idx := h.stateCache, h.stateIndex
	if f == nil || h.state.AppliedIndex() != idx {
		f, idx = h.buildState()
	}
	h.deliverState(f, idx)
}

func (h *Hub) deliverState(f *frame, idx uint64) {
	for w := range h.needState {
		w.mu.Lock()
		w.q, w.resync, w.after = []*frame{f}, false, idx
		w.mu.Unlock()
		w.signal()
	}
	clear(h.needState)
}

// buildState reads and encodes the whole state. Changes applied while it reads may or may not
// be in it; it is labelled with the index read first and every change after that index follows,
// which converges because applying a change twice is harmless (see DESIGN.md).
func (h *Hub) buildState() (*frame, uint64) {
	var (
		idx   uint64
		ns    []fsm.NamespaceView
		nodes []fsm.NodeMeta
	)
	for range 3 {
		idx = h.state.AppliedIndex()
		ns, nodes = h.state.Namespaces(), h.state.Nodes()
		if h.state.AppliedIndex() == idx {
			break
		}
	}
	if h.cfg.Cluster != nil {
		h.clusterJSON = mustJSON(h.cfg.Cluster())
		h.clusterFrame = h.encodeCluster(max(idx, h.lastFlushed))
		h.clusterDirty = false
	}
	f := h.encodeState(idx, ns, nodes, h.clusterJSON)
	h.stateCache, h.stateIndex = f, idx
	return f, idx
}

// checkCluster sends a cluster event when the view's encoding changed.
func (h *Hub) checkCluster() {
	h.clusterDirty = false
	if h.cfg.Cluster == nil {
		return
	}
	b := mustJSON(h.cfg.Cluster())
	if string(b) == string(h.clusterJSON) {
		return
	}
	h.clusterJSON = b
	h.clusterFrame = h.encodeCluster(h.lastFlushed)
	h.stateCache = nil
	for w := range h.ws {
		h.enqueue(w, h.clusterFrame)
	}
}

// watcher is one connected stream. The worker appends to q; the stream's goroutine takes.
type watcher struct {
	mu     sync.Mutex
	q      []*frame
	resync bool   // the queue was dropped (or never filled); a full state comes next
	after  uint64 // changes at or below this index are already known to the watcher
	resume bool   // the watcher asked to resume after `after`
	wake   chan struct{}
}

func newWatcher(after uint64, resume bool) *watcher {
	return &watcher{after: after, resume: resume, wake: make(chan struct{}, 1)}
}

func (w *watcher) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// take returns and clears the queued frames.
func (w *watcher) take() []*frame {
	w.mu.Lock()
	q := w.q
	w.q = nil
	w.mu.Unlock()
	return q
}

// attach registers a watcher with the worker (which sends it its first events).
func (h *Hub) attach(ctx context.Context, w *watcher) bool {
	select {
	case h.subs <- w:
		return true
	case <-h.done:
	case <-ctx.Done():
	}
	return false
}

func (h *Hub) detach(w *watcher) {
	select {
	case h.unsubs <- w:
		h.watchers.Add(-1)
	case <-h.done:
		h.watchers.Add(-1)
	}
}
