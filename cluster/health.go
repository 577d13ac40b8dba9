package cluster

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The leader's health prober. raft's own heartbeat observations are not enough to purge on
// time: a paused process's socket still accepts writes, so raft reports it only after the
// transport's I/O timeout (a 10 s grace became 15-16 s), and hashicorp/raft answers
// heartbeats without touching the disk, so a member whose log writes hang looks healthy
// forever. The leader therefore asks every member itself, often and with a short timeout,
// and counts as contact only an answer that shows the member keeping up: its applied index
// covers what the leader had committed at some moment, and that moment is the contact.

// HealthReply is a member's answer to the leader's probe (internal call, peer port).
type HealthReply struct {
	ID           string `json:"id"`
	AppliedIndex uint64 `json:"applied_index"` // raft's, counting entries the FSM never sees
	LastIndex    uint64 `json:"last_index"`
	Term         uint64 `json:"term"`
}

// MemberHealth is the leader's view of one member (leader only).
type MemberHealth struct {
	// LastContact is the latest moment the member is known to have been alive and caught up
	// (its applied index covered the leader's commit index of that moment).
	LastContact time.Time
	// LastAnswer is when it last answered a probe at all (a blocked disk still answers).
	LastAnswer time.Time
	// HealthySince is when its current run of timely, caught-up answers began; zero while
	// it is not healthy.
	HealthySince time.Time
	AppliedIndex uint64
	// Lag is how far its applied index was behind the leader's commit index when it answered.
	Lag uint64
}

// Healthy reports whether the member answered and kept up recently.
func (h MemberHealth) Healthy() bool { return !h.HealthySince.IsZero() }

type commitSample struct {
	at     time.Time
	commit uint64
}

type memberState struct {
	MemberHealth
	addr     string
	inflight bool
}

// healthProber runs on every node and probes only while the node leads.
type healthProber struct {
	n        *Node
	interval atomic.Int64 // probe period in ns: Config.HealthInterval, else learned from the grace
	fixed    bool         // Config.HealthInterval was given

	mu      sync.Mutex
	leading bool
	members map[string]*memberState
	samples []commitSample // the leader's commit index over time, oldest first

	done chan struct{}
	wg   sync.WaitGroup
}

// Probe periods derived from a grace are clamped to this range: often enough that a purge
// comes within a tenth of the grace of its deadline, rarely enough to cost nothing.
const (
	minHealthInterval = 100 * time.Millisecond
	maxHealthInterval = time.Second
	maxCommitSamples  = 256
)

func newHealthProber(n *Node) *healthProber {
	p := &healthProber{n: n, members: map[string]*memberState{}, done: make(chan struct{})}
	iv := n.cfg.HealthInterval
	if iv > 0 {
		p.fixed = true
	} else {
		iv = DefaultHealthInterval
	}
	p.interval.Store(int64(iv))
	p.wg.Add(1)
	go p.loop()
	return p
}

// HealthIntervalFor is the probe period that keeps a purge acting on grace within a tenth
// of the grace of its deadline (bounded): Config.HealthInterval for a node that knows its
// grace from the start.
func HealthIntervalFor(grace time.Duration) time.Duration {
	return min(max(grace/10, minHealthInterval), maxHealthInterval)
}

// learnGrace sets the probe period to a tenth of the grace the caller acts on (bounded),
// unless the configuration fixed one: the deadline then holds to within that tenth.
func (p *healthProber) learnGrace(grace time.Duration) {
	if p.fixed || grace <= 0 {
		return
	}
	p.interval.Store(int64(HealthIntervalFor(grace)))
}

func (p *healthProber) period() time.Duration { return time.Duration(p.interval.Load()) }

// timeout bounds one probe: an answer later than that is no answer.
func (p *healthProber) timeout() time.Duration {
	return min(max(2*p.period(), 200*time.Millisecond), 2*time.Second)
}

// failAfter is how stale a member's contact may be before it counts as failing: a healthy
// member that lags a little is credited with the previous round's sample, so two periods
// old is normal.
func (p *healthProber) failAfter() time.Duration {
	return max(4*p.period(), p.timeout()+p.period())
}

func (p *healthProber) close() {
	close(p.done)
	p.wg.Wait()
}

func (p *healthProber) loop() {
	defer p.wg.Done()
	t := time.NewTimer(p.period())
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		case <-p.n.watch.leaderChanged():
			// A new leader starts every member's grace at its first round: run it now, not
			// up to a period later.
		}
		p.round()
		t.Reset(p.period())
	}
}

// round samples the commit index and starts a probe of every member not already being probed.
func (p *healthProber) round() {
	n := p.n
	now := time.Now()
	if !n.IsLeader() {
		p.mu.Lock()
		if p.leading {
			p.leading = false
			clear(p.members)
			p.samples = p.samples[:0]
		}
		p.mu.Unlock()
		return
	}
	servers := n.servers()
	commit := n.raft.CommitIndex()
	p.mu.Lock()
	if !p.leading {
		// A new leader starts every member's grace anew: it has no history of its own.
		p.leading = true
		clear(p.members)
		p.samples = p.samples[:0]
	}
	p.samples = append(p.samples, commitSample{at: now, commit: commit})
	if len(p.samples) > maxCommitSamples {
		p.samples = append(p.samples[:0], p.samples[len(p.samples)-maxCommitSamples:]...)
	}
	seen := map[string]bool{}
	var probe []*memberState
	var ids []string
	for _, s := range servers {
		id := string(s.ID)
		if id == n.cfg.NodeID {
			continue
		}
		seen[id] = true
		m := p.members[id]
		if m == nil {
			// A member first seen now gets a full grace from now.
			m = &memberState{MemberHealth: MemberHealth{LastContact: now}}
			p.members[id] = m
		}
		m.addr = string(s.Address)
		if now.Sub(m.LastContact) > p.failAfter() {
			m.HealthySince = time.Time{}
		}
		if !m.inflight {
			m.inflight = true
			probe = append(probe, m)
			ids = append(ids, id)
		}
	}
	for id := range p.members {
		if !seen[id] {
			delete(p.members, id)
		}
	}
	p.mu.Unlock()
	for i, m := range probe {
		go p.probe(ids[i], m, m.addr)
	}
}

func (p *healthProber) probe(id string, m *memberState, addr string) {
	reply, answered, ok := p.ask(id, addr, p.timeout())
	p.mu.Lock()
	defer p.mu.Unlock()
	m.inflight = false
	if ok {
		p.credit(m, reply, answered)
	}
}

// ask sends one probe; ok is false when the member did not answer as itself in time.
func (p *healthProber) ask(id, addr string, timeout time.Duration) (reply HealthReply, answered time.Time, ok bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	status, err := p.n.client.call(ctx, http.MethodGet, addr, pathHealth, nil, &reply, false)
	return reply, time.Now(), err == nil && status == http.StatusOK && reply.ID == id
}

// credit records an answer (p.mu held): the member's contact is the newest commit sample it
// has applied.
func (p *healthProber) credit(m *memberState, reply HealthReply, answered time.Time) {
	if !p.leading || len(p.samples) == 0 {
		return // no contact: LastContact stays where it was
	}
	m.LastAnswer = answered
	m.AppliedIndex = reply.AppliedIndex
	if last := p.samples[len(p.samples)-1].commit; last > reply.AppliedIndex {
		m.Lag = last - reply.AppliedIndex
	} else {
		m.Lag = 0
	}
	// The newest sample whose commit index the member has applied is the latest moment it
	// is known to have kept up. Samples were all taken before this probe was sent.
	for i := len(p.samples) - 1; i >= 0; i-- {
		s := p.samples[i]
		if s.commit <= reply.AppliedIndex {
			if s.at.After(m.LastContact) {
				m.LastContact = s.at
			}
			break
		}
	}
	if answered.Sub(m.LastContact) <= p.failAfter() {
		if m.HealthySince.IsZero() {
			m.HealthySince = answered
		}
	} else {
		m.HealthySince = time.Time{}
	}
}

// confirmTimeout bounds the probe of ConfirmSilent: a member that came back answers within
// milliseconds, and one that is gone costs a purge no more than this.
const confirmTimeout = 100 * time.Millisecond

// ConfirmSilent asks a member that SilentMembers lists once more, now, before an action that
// cannot be undone (a purge). The rounds credit a member up to a period and a probe timeout
// late: a node whose partition healed could re-announce itself (a new incarnation, agents
// accepted) in that time and have it purged at once. True when it is still silent for longer
// than grace; leader only (false elsewhere).
func (n *Node) ConfirmSilent(id string, grace time.Duration) bool {
	p := n.health
	if !n.IsLeader() {
		return false
	}
	commit := n.raft.CommitIndex()
	now := time.Now()
	p.mu.Lock()
	m := p.members[id]
	if !p.leading || m == nil {
		p.mu.Unlock()
		return false
	}
	if len(p.samples) == 0 || p.samples[len(p.samples)-1].commit <= commit {
		p.samples = append(p.samples, commitSample{at: now, commit: commit})
	}
	addr := m.addr
	p.mu.Unlock()
	reply, answered, ok := p.ask(id, addr, confirmTimeout)
	p.mu.Lock()
	defer p.mu.Unlock()
	if ok {
		p.credit(m, reply, answered)
	}
	return time.Since(m.LastContact) > grace
}

// health is every member's health now (leader only; nil elsewhere).
func (p *healthProber) health() map[string]MemberHealth {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.leading {
		return nil
	}
	out := make(map[string]MemberHealth, len(p.members))
	now := time.Now()
	for id, m := range p.members {
		h := m.MemberHealth
		if now.Sub(h.LastContact) > p.failAfter() {
			h.HealthySince = time.Time{}
		}
		out[id] = h
	}
	return out
}

// silence is how long each failing member (contact older than failAfter) has been silent.
func (p *healthProber) silence(now time.Time) map[string]time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.leading {
		return nil
	}
	out := map[string]time.Duration{}
	fail := p.failAfter()
	for id, m := range p.members {
		if d := now.Sub(m.LastContact); d > fail {
			out[id] = d
		}
	}
	return out
}

// handleHealth answers the leader's probe. It touches no disk and takes no lock raft
// holds, so it answers as long as the process runs; whether it keeps up is in the indexes.
func (n *Node) handleHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, HealthReply{
		ID: n.cfg.NodeID, AppliedIndex: n.raft.AppliedIndex(), LastIndex: n.raft.LastIndex(), Term: n.raft.CurrentTerm(),
	})
}

// MemberHealth is the leader's view of every other member (leader only; nil elsewhere).
func (n *Node) MemberHealth() map[string]MemberHealth {
	if !n.IsLeader() {
		return nil
	}
	return n.health.health()
}
