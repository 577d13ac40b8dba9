package cluster

import (
	"time"

	"github.com/hashicorp/raft"
)

// Commit notices. hashicorp/raft tells a follower what is committed only with the entries
// that follow, or after CommitTimeout (100-200 ms) when none do: its heartbeats carry no
// commit index. A follower answers its agent's online only once the entry is applied there
// (read-your-write), so on a quiet cluster every forwarded write would wait that long, and a
// registration on the leader would be missing on the followers for as long.
//
// So after a commit the leader sends every other member a commit notice: an AppendEntries
// with no entries whose previous entry is the committed one and whose commit index is its
// index, which is what raft's own replication sends after CommitTimeout, sent at once. It
// is sound raft: the entry is a batch this node appended as the leader of the entry's term
// and saw committed, so the notice says only what that term's leader knows; a member in a
// later term ignores it, and one whose log does not hold that entry refuses it (the
// previous-entry check) and hears from raft's replication as before. A notice costs one
// small RPC per member and no log entry or fsync; the barrier entry it replaces cost an
// fsync on the leader and then on the follower, one after the other (BENCHMARKS.md, round
// 6: most of a forwarded write's extra latency).

// nudgeDelay is how long the leader waits for an entry that would carry the commit index
// anyway before it sends a notice nobody is waiting for.
const nudgeDelay = time.Millisecond

// nudgeFollowers makes sure the followers hear soon that index (a batch's entry) is
// committed; last is the leader's last index when that was known: any entry appended after
// it carries the news with raft's own replication. urgent says a follower waits for the
// news (a forwarded write) and no next batch is on its way: it goes out at once, from the
// caller. Otherwise
// nudgeLoop pauses briefly and sends it only if nothing else was appended: a busy leader
// sends none.
func (n *Node) nudgeFollowers(index, last uint64, urgent bool) {
	if urgent {
		// Straight from the commit: a hop through nudgeLoop's goroutine is latency a
		// follower's agent waits for. Sending only hands the notice to each member's sender.
		n.noticeCommit(index)
		return
	}
	n.nudge.mu.Lock()
	defer n.nudge.mu.Unlock()
	n.nudge.want = max(n.nudge.want, last)
	n.nudge.notice = max(n.nudge.notice, index)
	if n.nudge.running || n.nudge.stopped {
		return
	}
	n.nudge.running = true
	n.nudge.loop.Add(1)
	go n.nudgeLoop()
}

func (n *Node) nudgeLoop() {
	defer n.nudge.loop.Done()
	var done uint64
	for {
		n.nudge.mu.Lock()
		want, notice := n.nudge.want, n.nudge.notice
		if notice <= done || n.nudge.stopped {
			n.nudge.running = false
			n.nudge.mu.Unlock()
			return
		}
		n.nudge.mu.Unlock()
		time.Sleep(nudgeDelay)
		// A batch being formed or committed, or proposals waiting for one, will append an
		// entry that carries the news.
		if n.raft.LastIndex() <= want && !n.batcher.busy() {
			n.noticeCommit(notice)
		}
		done = notice
	}
}

// announce waits for f, one of raft's own entries this node appended as leader (a barrier,
// a membership change), and has the members told at once that it is committed: no batch's
// notice covers it, and they would otherwise learn it only from the next batch or after
// CommitTimeout (a new member's configuration, and the applied index the health prober
// compares, would lag that long). It returns f's error.
func (n *Node) announce(f raft.Future) error {
	err := f.Error()
	if i, ok := f.(raft.IndexFuture); ok && err == nil {
		n.noticeCommit(i.Index())
	}
	return err
}

// noticeCommit has every other member sent the commit notice for index, an entry this
// node appended as leader and saw committed, without waiting for their answers.
func (n *Node) noticeCommit(index uint64) {
	var entry raft.Log
	if err := n.logs.GetLog(index, &entry); err != nil {
		return // compacted into a snapshot already: raft's replication tells the followers
	}
	n.sendNotices(index, entry.Term)
}

// sendNotices has every other member told that index, of term, is committed.
func (n *Node) sendNotices(index, term uint64) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	self := raft.ServerID(n.cfg.NodeID)
	for _, srv := range f.Configuration().Servers {
		if srv.ID == self {
			continue
		}
		n.nudge.mu.Lock()
		if n.nudge.members == nil {
			n.nudge.members = make(map[raft.ServerID]*noticeState)
		}
		st := n.nudge.members[srv.ID]
		if st == nil {
			st = &noticeState{}
			n.nudge.members[srv.ID] = st
		}
		if index > st.index {
			st.index, st.term = index, term
		}
		start := !st.running && !n.nudge.stopped
		st.running = st.running || start
		n.nudge.mu.Unlock()
		if start {
			go n.noticeMember(srv, st)
		}
	}
}

// noticeState is one member's notice to send: one at a time, the newest index wins.
type noticeState struct {
	running     bool
	index, term uint64
}

// A member refuses a notice while its log does not hold the entry yet: the entry was
// committed by the other members' copies, and this member's append is usually already on
// its way (well under a millisecond). The notice is retried after pauses doubling from
// noticeRetry up to noticeRetryCap, for up to noticeRetryFor in all: a member whose disk is
// slower than the majority's still hears of the commit within a few milliseconds of its
// append, well before raft's CommitTimeout would tell it.
const (
	noticeRetry    = 200 * time.Microsecond
	noticeRetryCap = 3200 * time.Microsecond
	noticeRetryFor = 50 * time.Millisecond
)

// noticeMember sends st's notices to srv until none is newer than what it accepted. Its
// answer is not waited for by anyone: a member that is down costs only this goroutine (the
// transport's dial and I/O timeouts bound it). A member down, in a later term or with a
// different log hears from raft's replication instead.
func (n *Node) noticeMember(srv raft.Server, st *noticeState) {
	var done uint64
	var retry, waited time.Duration = noticeRetry, 0
	for {
		n.nudge.mu.Lock()
		index, term := st.index, st.term
		if index <= done || n.nudge.stopped {
			st.running = false
			n.nudge.mu.Unlock()
			return
		}
		n.nudge.mu.Unlock()
		self := raft.ServerID(n.cfg.NodeID)
		addr := n.transport.EncodePeer(self, n.transport.LocalAddr())
		req := raft.AppendEntriesRequest{
			RPCHeader:         raft.RPCHeader{ProtocolVersion: n.protocolVersion, ID: []byte(self), Addr: addr},
			Term:              term,
			Leader:            addr, // what raft's replication also sets, for older readers
			PrevLogEntry:      index,
			PrevLogTerm:       term,
			LeaderCommitIndex: index,
		}
		var resp raft.AppendEntriesResponse
		err := n.transport.AppendEntries(srv.ID, srv.Address, &req, &resp)
		switch {
		case err == nil && resp.Success:
			n.nudge.accepted.Add(1)
			done, retry, waited = index, noticeRetry, 0
		case err == nil && resp.Term == term && resp.LastLog < index && waited < noticeRetryFor:
			n.nudge.early.Add(1)
			time.Sleep(retry)
			waited += retry
			retry = min(2*retry, noticeRetryCap)
		default:
			done, retry, waited = index, noticeRetry, 0
		}
	}
}

// stopNudging ends nudgeLoop before raft shuts down, waiting at most a few seconds.
// Notices still in flight end with the transport (closed after raft).
func (n *Node) stopNudging() {
	n.nudge.mu.Lock()
	n.nudge.stopped = true
	n.nudge.mu.Unlock()
	finished := make(chan struct{})
	go func() {
		n.nudge.loop.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(5 * time.Second):
		n.log.Warn("closing while a commit notice to the followers is still pending")
	}
}

// commitNoticesAccepted counts the notices members accepted (tests and diagnostics).
func (n *Node) commitNoticesAccepted() uint64 { return n.nudge.accepted.Load() }
