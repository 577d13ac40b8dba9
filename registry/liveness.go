package registry

import (
	"errors"
	"slices"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/fsm"
)

// watchLiveness runs the two halves of DESIGN.md's liveness: on the leader, purge members
// silent for longer than the grace; on every node, fence itself when cut off from the
// leader for that long (or when the leader already purged it), and recover afterwards.
func (n *Node) watchLiveness() {
	defer n.wg.Done()
	tick := min(max(n.cfg.NodeGrace/10, 20*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	lastLeaderContact := time.Now()
	reconcileEvery := max(n.cfg.NodeGrace/2, time.Second)
	lastReconcile := time.Now()
	ad := newAdopter(n)
	lives := silentLives{}
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		// raft's LastContact is only updated while following; a node that just stepped down
		// from leading would otherwise look cut off for as long as it led.
		now := time.Now()
		if n.raft.IsLeader() {
			lastLeaderContact = now
		} else if lc := n.raft.LastContact(); lc.After(lastLeaderContact) {
			lastLeaderContact = lc
		}
		n.purgeSilentMembers(ad, lives, now)
		n.checkFence(now.Sub(lastLeaderContact))
		if now.Sub(lastReconcile) >= reconcileEvery {
			lastReconcile = now
			n.reconcileOwnSessions()
		}
	}
}

// reconcileOwnSessions makes the replicated state agree with this node's connections: it
// deregisters sessions the state says this node owns but that have no connection here (a
// deregistration that failed during an election, sessions a restored snapshot brought back)
// and registers what live connections asked for but the state lacks (a restored snapshot
// older than their online). It also re-announces the node if its metadata is not current.
// Without it such differences would last until the node restarts.
func (n *Node) reconcileOwnSessions() {
	if n.fenced.Load() || !n.announced.Load() {
		return
	}
	want := n.ownMeta()
	if meta, ok := n.state.Node(n.cfg.NodeID); !ok || meta.Incarnation != want.Incarnation {
		if err := n.announceOnce(n.ctx); err != nil {
			n.log.Warn("re-announce failed; will retry", "err", err)
			return
		}
	} else if meta != want {
		// Same life, other metadata: a leader of an earlier build rewrote our SetNode without
		// the fields it does not know (Features), or a snapshot it took dropped them. Without
		// this the binary log form would stay off until every node restarted once more.
		n.log.Debug("re-announcing node metadata", "have", meta, "want", want)
		errs, err := n.submit(n.ctx, fsm.SetNode{RequestID: n.newRequestID(), Meta: want})
		if err == nil {
			err = firstError(errs)
		}
		if err != nil {
			n.log.Warn("metadata refresh failed; will retry", "err", err)
			return
		}
	}
	var cmds []fsm.Command
	var owners []*agentSession // for each Register in cmds, the session it restores
	for _, id := range n.state.SessionsOf(n.cfg.NodeID) {
		if _, live := n.live.Load(id); !live {
			cmds = append(cmds, fsm.Deregister{RequestID: n.newRequestID(), Session: id})
		}
	}
	stale := len(cmds)
	now := time.Now().UnixMilli()
	n.live.Range(func(k, v any) bool {
		s := v.(*agentSession)
		held := n.state.NamespacesOf(s.id)
		for _, ns := range s.snapshot() {
			if !slices.Contains(held, ns) {
				cmds = append(cmds, fsm.Register{RequestID: n.newRequestID(), Reg: fsm.Registration{
					Namespace: ns, Address: s.addr, Session: s.id, Since: now,
				}})
				owners = append(owners, s)
			}
		}
		return len(cmds) < 4096 // bounded per round; the next round does the rest
	})
	if len(cmds) == 0 {
		return
	}
	n.log.Warn("reconciling the state with this node's connections", "stale_sessions", stale, "missing_registrations", len(cmds)-stale)
	n.metrics.purges.WithLabelValues("reconcile").Inc()
	errs, err := n.submit(n.ctx, cmds...)
	if err != nil {
		n.log.Warn("reconcile not committed; will retry", "err", err)
		return
	}
	// A live connection whose session the cluster closed cannot register again: make the
	// agent reconnect, which gives it a fresh session.
	for i, s := range owners {
		if stale+i < len(errs) && errors.Is(errs[stale+i], fsm.ErrSessionClosed) {
			s.ch.Close(websocket.StatusServiceRestart, "session closed by the cluster: reconnect")
		}
	}
}

// purgeSilentMembers removes, through the log, the sessions of members the leader has not
// heard from for longer than the grace, and the metadata of nodes that left. Once every
// server reads fsm.Adopt, a silent member's agents are checked first, in the background
// (adopt.go): those that answer stay registered, held by the cluster, which checks them
// again every adoptRecheckEvery.
func (n *Node) purgeSilentMembers(ad *adopter, lives silentLives, now time.Time) {
	if !n.raft.IsLeader() {
		clear(lives)
		return
	}
	adopt := n.adoptSupported()
	if adopt {
		ad.startRecheck(now)
	}
	var cmds []fsm.Command
	silent := n.raft.SilentMembers(n.cfg.NodeGrace)
	for id := range lives {
		if !slices.Contains(silent, id) {
			delete(lives, id)
		}
	}
	for _, id := range silent {
		// A member back from a partition announces a new incarnation through this leader
		// before the probes see it keeping up again: that life starts its own grace, and
		// the purge only ever covers the lives seen silent for a whole grace (a purge
		// resolved at apply time would take the new life and fence the member again).
		upTo := n.incarnationOf(id)
		life, seen := lives[id]
		switch {
		case !seen: // silent for longer than the grace already
			life = silentLife{upTo: upTo, due: now}
			lives[id] = life
		case upTo > life.upTo:
			life = silentLife{upTo: upTo, due: now.Add(n.cfg.NodeGrace)}
			lives[id] = life
		}
		if now.Before(life.due) || life.upTo == 0 || !n.needsPurgeUpTo(id, life.upTo) || ad.busy(id) {
			continue
		}
		// Asked once more first: a member back from a partition may have announced a new
		// incarnation since the last probe round, and purging that would fence it again.
		if !n.raft.ConfirmSilent(id, n.cfg.NodeGrace) {
			continue
		}
		if adopt && len(n.state.SessionsOf(id)) > 0 {
			ad.startAdopt(id, life.upTo)
			continue
		}
		n.log.Warn("purging the sessions of a silent member", "member", id, "sessions", len(n.state.SessionsOf(id)), "grace", n.cfg.NodeGrace)
		cmds = append(cmds, fsm.PurgeNode{RequestID: n.newRequestID(), Node: id, UpToIncarnation: life.upTo})
		n.metrics.purges.WithLabelValues("silent_member").Inc()
	}
	members := map[string]bool{}
	for _, m := range n.raft.Members() {
		members[m.ID] = true
	}
	if len(members) > 0 {
		for _, meta := range n.state.Nodes() {
			if members[meta.ID] || ad.busy(meta.ID) {
				continue
			}
			// A node removed while silent (autopilot removes a dead voter, an admin a gone
			// node) may hold agents that are alive and cannot know: they are checked, as a
			// silent member's are, before it is forgotten (RemoveNode purges every session).
			if adopt && len(n.state.SessionsOf(meta.ID)) > 0 {
				ad.startAdopt(meta.ID, 0) // every life: the node left
				continue
			}
			n.log.Info("forgetting a node that left the cluster", "member", meta.ID)
			cmds = append(cmds, fsm.RemoveNode{RequestID: n.newRequestID(), Node: meta.ID})
			n.metrics.purges.WithLabelValues("removed").Inc()
		}
	}
	if len(cmds) == 0 {
		return
	}
	if _, err := n.submit(n.ctx, cmds...); err != nil {
		n.log.Warn("purge not committed; will retry", "err", err)
	}
}

// silentLives is what the leader's purge remembers of each silent member: the newest
// incarnation it had when the leader found it silent, and when it may be purged.
type silentLives map[string]silentLife

type silentLife struct {
	upTo uint64
	due  time.Time
}

// incarnationOf is the newest incarnation of id the state knows: its metadata's, or a
// session's (0: none).
func (n *Node) incarnationOf(id string) uint64 {
	var inc uint64
	if meta, ok := n.state.Node(id); ok {
		inc = meta.Incarnation
	}
	for _, s := range n.state.SessionsOf(id) {
		inc = max(inc, s.Incarnation)
	}
	return inc
}

// needsPurgeUpTo is true while a member still owns sessions of the lives up to upTo, or
// those lives are not yet marked purged (so their late writes will be refused).
func (n *Node) needsPurgeUpTo(id string, upTo uint64) bool {
	for _, s := range n.state.SessionsOf(id) {
		if s.Incarnation <= upTo {
			return true
		}
	}
	mark, _ := n.state.PurgeMark(id)
	return mark < upTo
}

func (n *Node) checkFence(sinceLeader time.Duration) {
	if !n.announced.Load() {
		return // never part of the cluster yet: readiness covers startup
	}
	cutOff := sinceLeader > n.cfg.NodeGrace
	mark, _ := n.state.PurgeMark(n.cfg.NodeID)
	purged := mark >= n.incarnation.Load()
	switch {
	case !n.fenced.Load() && (cutOff || purged):
		reason := "cut off from the leader for longer than the node grace"
		if !cutOff {
			reason = "the leader purged this node's sessions"
		}
		n.fence(reason)
	case n.fenced.Load() && !cutOff:
		if _, addr := n.raft.Leader(); addr != "" {
			n.unfence()
		}
	}
}

// fence closes every agent connection with 1012 so agents reconnect to a healthy node,
// and refuses new ones: the majority is purging this node's registrations anyway.
func (n *Node) fence(reason string) {
	n.fenceMu.Lock()
	defer n.fenceMu.Unlock()
	if n.fenced.Swap(true) {
		return
	}
	n.log.Warn("fencing this node: closing agent connections", "reason", reason, "agents", n.ws.Len())
	n.ws.CloseAll(websocket.StatusServiceRestart, "fenced: "+reason)
}

// unfence starts a new incarnation (the old one's sessions are purged by its announcement)
// and accepts agents again.
func (n *Node) unfence() {
	n.fenceMu.Lock()
	defer n.fenceMu.Unlock()
	if !n.fenced.Load() {
		return
	}
	inc, err := nextIncarnation(n.cfg.DataDir)
	if err != nil {
		n.log.Error("cannot start a new incarnation; staying fenced", "err", err)
		return
	}
	if mark, _ := n.state.PurgeMark(n.cfg.NodeID); inc <= mark {
		n.log.Error("new incarnation is not above the cluster's purge mark (clock skew?); staying fenced", "incarnation", inc, "mark", mark)
		return
	}
	n.incarnation.Store(inc)
	if err := n.announceOnce(n.ctx); err != nil {
		n.log.Warn("re-announce failed; staying fenced", "err", err)
		return
	}
	n.fenced.Store(false)
	n.log.Info("leader reachable again: serving agents", "incarnation", inc)
}

// Fenced reports whether the node has fenced itself.
func (n *Node) Fenced() bool { return n.fenced.Load() }
