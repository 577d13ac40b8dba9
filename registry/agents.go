package registry

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/wsregistry/wsregistry/auth"
	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/later"
	"github.com/wsregistry/wsregistry/wsserver"
)

// agentSession is what a node remembers about one agent connection.
type agentSession struct {
	// What every where reads and writes, first and together: with a thousand connections a
	// lookup finds its session out of the cache, and each line it touches is a miss. The
	// session is padded to 256 bytes, a size class whose objects start on 256-byte
	// boundaries, so rotation is one cache line and the other three fields the next.
	// handleWhere runs inline on the channel's reader: only that goroutine touches
	// rotation (its round robin, rotation.go) and whereReply (its reply buffer).
	rotation    whereRotation
	whereStripe *whereStripe // where this connection's lookups are counted
	whereReply  []byte
	limiter     rateLimiter

	id   fsm.SessionID
	addr string // the agent's host:port
	ch   *wsserver.Channel

	mu         sync.Mutex
	namespaces []string        // what this connection asked to register, in order
	inherited  map[string]bool // namespaces moved here from a replaced connection, not yet confirmed by an online
	failed     map[string]bool // namespaces whose online failed for now (503): the reconciler retries

	_ [sessionPad]byte
}

// sessionPad fills agentSession to 256 bytes on 64-bit platforms (TestAgentSession_* keeps
// it there); 224, its size without, is a size class whose objects are only 32-byte aligned.
const sessionPad = 32

// confirm marks ns as asked for by this connection itself, and reports whether that is
// news for the log: ns was inherited, or an earlier online for it failed.
func (s *agentSession) confirm(ns string) (news bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	news = s.inherited[ns] || s.failed[ns]
	delete(s.inherited, ns)
	delete(s.failed, ns)
	return news
}

// failedOnce remembers that registering ns failed for now (its success is then news).
func (s *agentSession) failedOnce(ns string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed == nil {
		s.failed = make(map[string]bool)
	}
	s.failed[ns] = true
}

// unconfirmed returns and forgets the inherited namespaces the connection never asked for.
func (s *agentSession) unconfirmed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for ns := range s.inherited {
		out = append(out, ns)
		if i := slices.Index(s.namespaces, ns); i >= 0 {
			s.namespaces = slices.Delete(s.namespaces, i, i+1)
		}
	}
	s.inherited = nil
	slices.Sort(out)
	return out
}

func (s *agentSession) add(ns string) {
	s.addUpTo(ns, -1)
}

// addUpTo remembers ns unless the session already holds max namespaces (max < 0: no limit).
// added says whether ns is new to the session; ok is false when the limit refused it.
func (s *agentSession) addUpTo(ns string, max int) (added, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if slices.Contains(s.namespaces, ns) {
		return false, true
	}
	if max >= 0 && len(s.namespaces) >= max {
		return false, false
	}
	s.namespaces = append(s.namespaces, ns)
	return true, true
}

// monoEpoch anchors monoNow.
var monoEpoch = time.Now()

// monoNow is the monotonic clock alone, as time since the process started: one clock read
// (time.Now reads the wall clock too), which a where pays twice.
func monoNow() time.Duration { return time.Since(monoEpoch) }

// rateLimited answers a request over the connection's rate with 429; now is monoNow's.
func (n *Node) rateLimited(s *agentSession, now time.Duration) error {
	if s == nil || s.limiter.allow(int64(now), n.cfg.Limits.MaxRequestsPerSecondPerConn) {
		return nil
	}
	n.metrics.refused.WithLabelValues("rate_limit").Inc()
	return wsserver.NewError(429, "too many requests on this connection (limit %g/s)", n.cfg.Limits.MaxRequestsPerSecondPerConn)
}

// remove forgets ns: its registration failed, so neither reconcile nor a handover should
// try it again (the agent is told and may ask again).
func (s *agentSession) remove(ns string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.namespaces, ns); i >= 0 {
		s.namespaces = slices.Delete(s.namespaces, i, i+1)
	}
	delete(s.failed, ns)
}

func (s *agentSession) snapshot() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.namespaces)
}

// agentGrant is the agent token a connection was accepted with (nil: none).
func agentGrant(ch *wsserver.Channel) *auth.Grant {
	g, _ := ch.Auth().(*auth.Grant)
	return g
}

func sessionOf(ch *wsserver.Channel) *agentSession {
	s, _ := ch.Value().(*agentSession)
	return s
}

// handover is what a replaced connection leaves for the connection that replaced it.
type handover struct {
	from       fsm.SessionID
	namespaces []string
}

func (n *Node) agentOpened(ch *wsserver.Channel) {
	s := &agentSession{addr: ch.Key(), ch: ch, id: fsm.SessionID{Node: n.cfg.NodeID, Incarnation: n.incarnation.Load(), Seq: n.sessionSeq.Add(1)}}
	s.whereStripe = n.metrics.where.stripe(s.id.Seq)
	ch.SetValue(s)
	n.live.Store(s.id, s)
	n.metrics.agentEvents.WithLabelValues("opened").Inc()
	n.log.Info("agent connected", "host", ch.Key(), "remote", ch.RemoteAddr(), "session", s.id.String())
	n.handoverMu.Lock()
	h, ok := n.handovers[ch.Key()]
	delete(n.handovers, ch.Key())
	n.handoverMu.Unlock()
	if ok {
		n.moveRegistrations(h, ch, s)
	}
}

// agentClosed runs after every handler of the channel returned, so no `online` of this
// session can be committed after the deregistration issued here.
func (n *Node) agentClosed(ch *wsserver.Channel) {
	s := sessionOf(ch)
	if s == nil {
		return
	}
	namespaces := s.snapshot()
	n.metrics.agentEvents.WithLabelValues("closed").Inc()
	n.log.Info("agent disconnected", "host", ch.Key(), "session", s.id.String(), "namespaces", namespaces, "reason", errString(ch.Err()))
	if len(namespaces) == 0 || n.fenced.Load() {
		// A fenced node's sessions are purged by the leader; writing now would only wait.
		n.live.Delete(s.id)
		return
	}
	if n.isMoving(s) {
		// Closed to move it (rebalance, drain): its registrations stay, and the session stays
		// live for the reconciler, until the agent registered again elsewhere (rebalance.go).
		return
	}
	// A newer connection from the same agent replaced this one: its registrations follow
	// the new connection. The server opens the newer one only after this returns, so leave
	// them to it rather than deregister and leave the agent unfindable in between.
	if newer := n.ws.Channel(ch.Key()); newer != nil && newer != ch {
		h := handover{from: s.id, namespaces: namespaces}
		if ns := sessionOf(newer); ns != nil {
			n.moveRegistrations(h, newer, ns) // the newer one was opened first after all
			return
		}
		n.handoverMu.Lock()
		n.handovers[ch.Key()] = h
		n.handoverMu.Unlock()
		// Should the newer connection never open (shutdown in between), nobody would take
		// the registrations: deregister them then, rather than leave a ghost.
		time.AfterFunc(handoverTimeout, func() {
			n.handoverMu.Lock()
			left, still := n.handovers[ch.Key()]
			if still && left.from == h.from {
				delete(n.handovers, ch.Key())
			}
			n.handoverMu.Unlock()
			if still && left.from == h.from {
				n.deregister(s.id)
			}
		})
		return
	}
	n.deregister(s.id)
}

// handoverTimeout bounds how long a replaced connection's registrations wait for the newer
// connection to take them.
const handoverTimeout = 10 * time.Second

// deregister removes a closed session's registrations. Until it returns the session counts
// as live, so the reconciler never races it; if it fails, the reconciler retries.
func (n *Node) deregister(id fsm.SessionID) {
	defer n.live.Delete(id)
	if _, err := n.submit(n.ctx, fsm.Deregister{RequestID: n.newRequestID(), Session: id}); err != nil {
		// The leader purges this node's sessions if it stays unreachable; until then the
		// entry may be missing: say so loudly.
		n.log.Warn("could not deregister a closed agent session", "session", id.String(), "err", err)
	}
}

// moveRegistrations registers h's namespaces under the new session and deregisters the old
// one in the same raft entry, so the agent is findable at every index.
func (n *Node) moveRegistrations(h handover, ch *wsserver.Channel, to *agentSession) {
	// The gate lets only a connection with the same token replace another; what that
	// token may no longer register (a reload narrowed it) is not carried over.
	g, ok := n.auth.CurrentAgent(agentGrant(ch))
	kept := h.namespaces[:0:0]
	for _, name := range h.namespaces {
		if ok && g.AllowsNamespace(name) {
			kept = append(kept, name)
		}
	}
	h.namespaces = kept
	now := time.Now().UnixMilli()
	cmds := make([]fsm.Command, 0, len(h.namespaces)+1)
	to.mu.Lock()
	if to.inherited == nil {
		to.inherited = map[string]bool{}
	}
	for _, name := range h.namespaces {
		if !slices.Contains(to.namespaces, name) {
			to.inherited[name] = true
		}
	}
	to.mu.Unlock()
	for _, name := range h.namespaces {
		to.add(name)
		cmds = append(cmds, fsm.Register{RequestID: n.newRequestID(), Reg: fsm.Registration{
			Namespace: name, Address: ch.Key(), Session: to.id, Since: now,
		}})
	}
	cmds = append(cmds, fsm.Deregister{RequestID: n.newRequestID(), Session: h.from})
	_, err := n.submit(n.ctx, cmds...)
	n.live.Delete(h.from)
	if err != nil {
		n.log.Warn("could not move registrations to the replacing connection", "from", h.from.String(), "to", to.id.String(), "err", err)
		return
	}
	n.log.Info("registrations moved to the replacing connection", "host", ch.Key(), "from", h.from.String(), "to", to.id.String(), "namespaces", h.namespaces)
	// The same agent reconnecting says online again at once; a different process that now
	// has this address does not. What is not confirmed within the window is dropped, so it
	// never stays registered under another service's namespaces.
	time.AfterFunc(n.cfg.InheritWindow, func() { n.dropUnconfirmed(ch, to) })
}

func (n *Node) dropUnconfirmed(ch *wsserver.Channel, s *agentSession) {
	select {
	case <-ch.Done():
		return // closed: its deregistration removes everything
	default:
	}
	names := s.unconfirmed()
	if len(names) == 0 {
		return
	}
	cmds := make([]fsm.Command, 0, len(names))
	for _, ns := range names {
		cmds = append(cmds, fsm.Unregister{RequestID: n.newRequestID(), Session: s.id, Namespace: ns})
	}
	if _, err := n.submit(n.ctx, cmds...); err != nil {
		n.log.Warn("could not drop inherited namespaces", "session", s.id.String(), "err", err)
		return
	}
	n.log.Info("dropped inherited namespaces the replacing connection never asked for", "host", ch.Key(), "session", s.id.String(), "namespaces", names)
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// handleOnline registers a namespace for the connection's agent. It is an asynchronous
// handler: the checks run on the connection's reader, the write joins the next batch, and
// the reply leaves from the commit's callback, so thousands of onlines waiting on raft hold
// no goroutine each.
func (n *Node) handleOnline(ctx context.Context, ch *wsserver.Channel, props json.RawMessage, reply *wsserver.Reply) {
	o, err := n.prepareOnline(ch, props)
	if err != nil {
		n.metrics.observeRequest("online", err)
		reply.Send(nil, err)
		return
	}
	// The write outlives an abort or a disconnect: the deregistration that follows a close
	// must come after it (the close waits for this reply).
	n.raft.CommitAsync([]fsm.Command{o.reg}, func(b *later.Batch, errs []error, err error) {
		err = n.onlineCommitted(ctx, ch, o, errs, err)
		n.metrics.observeRequest("online", err)
		// "undefined" result: {"status":200}. The commit's replies to this connection
		// leave together once the commit's callbacks are done (b).
		reply.SendIn(b, nil, err)
	})
}

// pendingOnline is an online between its checks and its commit.
type pendingOnline struct {
	s     *agentSession
	reg   fsm.Register
	added bool // the namespace is new on this connection
}

// prepareOnline checks an online and adds its namespace to the connection's session.
func (n *Node) prepareOnline(ch *wsserver.Channel, props json.RawMessage) (pendingOnline, error) {
	s := sessionOf(ch)
	if s == nil {
		return pendingOnline{}, wsserver.NewError(500, "online: connection has no session")
	}
	if err := n.rateLimited(s, monoNow()); err != nil {
		return pendingOnline{}, err
	}
	ns, err := namespaceArg("online", props)
	if err != nil {
		return pendingOnline{}, err
	}
	g, ok := n.auth.CurrentAgent(agentGrant(ch))
	if !ok {
		// The token file changed since this connection was accepted.
		n.auth.RefuseFrom(ch.RemoteAddr(), agentGrant(ch), "online "+strconv.Quote(ns)+" as "+ch.Key(), auth.ReasonBadToken)
		return pendingOnline{}, wsserver.NewError(401, "online: this connection's agent token is no longer accepted (the token file changed): reconnect with a valid token")
	}
	if !g.AllowsNamespace(ns) {
		// The connection stays up: the agent may own other namespaces.
		n.auth.RefuseFrom(ch.RemoteAddr(), g, "online "+strconv.Quote(ns)+" as "+ch.Key(), auth.ReasonNamespace)
		return pendingOnline{}, wsserver.NewError(403, "online: the agent token %q may not register namespace %q", g.Name, ns)
	}
	added, ok := s.addUpTo(ns, n.cfg.Limits.MaxRegistrationsPerConn)
	if !ok {
		max := n.cfg.Limits.MaxRegistrationsPerConn
		n.metrics.refused.WithLabelValues("registration_limit").Inc()
		return pendingOnline{}, wsserver.NewError(429, "online: this connection already registered %d namespaces (the limit)", max)
	}
	return pendingOnline{s: s, added: added, reg: fsm.Register{RequestID: n.newRequestID(), Reg: fsm.Registration{
		Namespace: ns, Address: ch.Key(), Session: s.id, Since: time.Now().UnixMilli(),
	}}}, nil
}

// onlineCommitted finishes an online once its write's outcome is known.
func (n *Node) onlineCommitted(ctx context.Context, ch *wsserver.Channel, o pendingOnline, errs []error, err error) error {
	s, ns := o.s, o.reg.Reg.Namespace
	if err != nil {
		// Not committed within the commit wait (no leader): the namespace stays on the
		// session, so the reconciler registers it once a leader is back.
		n.log.Warn("register failed", "namespace", ns, "host", ch.Key(), "session", s.id.String(), "err", err)
		s.failedOnce(ns)
		return wsserver.NewError(503, "online: registration of %q was not committed: %v", ns, err)
	}
	if err := firstError(errs); err != nil {
		s.remove(ns) // refused for good: nobody should retry it behind the agent's back
		switch {
		case errors.Is(err, fsm.ErrInvalid):
			return wsserver.NewError(400, "online: %v", err)
		case errors.Is(err, fsm.ErrSessionClosed):
			return wsserver.NewError(410, "online: %v", err)
		}
		return wsserver.NewError(500, "online: %v", err)
	}
	news := s.confirm(ns)
	// One line per namespace a connection adds (or first confirms); an agent repeating online
	// for a namespace it holds (a write all the same) would otherwise fill the log and
	// put a formatted line on the write path of every repeat.
	level := slog.LevelDebug
	if o.added || news {
		level = slog.LevelInfo
	}
	if n.log.Enabled(ctx, level) {
		n.log.Log(ctx, level, "agent registered", "namespace", ns, "host", ch.Key(), "session", s.id.String())
	}
	return nil
}

func firstError(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) handleWhere(_ context.Context, ch *wsserver.Channel, props json.RawMessage) (json.RawMessage, error) {
	start := monoNow()
	s := sessionOf(ch)
	if err := n.rateLimited(s, start); err != nil {
		n.metrics.observeRequest("where", err)
		return nil, err
	}
	var reg fsm.Registration
	var ok bool
	if ns, plain := plainNamespaceBytes(props); plain {
		reg, ok = n.state.PickBytes(ns, n.positionBytes(s, ns)) // no copy of the namespace
	} else {
		ns, err := namespaceArg("where", props)
		if err != nil {
			n.metrics.observeRequest("where", err)
			return nil, err
		}
		reg, ok = n.state.Pick(ns, n.position(s, ns))
	}
	stripe := n.metrics.where.stripe(0)
	if s != nil {
		stripe = s.whereStripe
	}
	stripe.observe(monoNow() - start)
	if !ok {
		return nil, nil // unknown namespace: {"status":200} with no data, as the original
	}
	if s == nil {
		return appendQuotedAddress(nil, reg.Address), nil
	}
	// where is an inline handler: the Mux copies the reply before this channel's next
	// request, so one buffer per connection serves every reply (no allocation per where).
	s.whereReply = appendQuotedAddress(s.whereReply[:0], reg.Address)
	return s.whereReply, nil
}

// Where picks one live instance of ns round-robin from this node's local state.
func (n *Node) Where(ns string) (string, bool) {
	reg, ok := n.state.Pick(ns, n.roundRobin.Add(1)-1)
	return reg.Address, ok
}

// appendQuotedAddress appends the JSON string of an address; addresses are host:port, so
// only the rare one with quotes or backslashes needs real escaping.
func appendQuotedAddress(b []byte, addr string) json.RawMessage {
	for i := 0; i < len(addr); i++ {
		if c := addr[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x7f {
			q, _ := json.Marshal(addr)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, addr...)
	return append(b, '"')
}
