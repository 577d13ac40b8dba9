package wsserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// registryAddr is one entry of AgentConfig.Registries.
type registryAddr struct {
	target string // "host:port"
	prefix string // "/t/<token>" or ""
	tls    bool
}

// parseRegistries reads Registries (or Registry) and shuffles them, so that agents
// started with the same list spread over the nodes.
func parseRegistries(cfg AgentConfig) ([]registryAddr, error) {
	list := cfg.Registries
	if len(list) == 0 && cfg.Registry != "" {
		list = []string{cfg.Registry}
	}
	if len(list) == 0 {
		return nil, errors.New("wsserver: agent: registry address required")
	}
	regs := make([]registryAddr, 0, len(list))
	for _, s := range list {
		r, err := parseRegistryAddr(s, cfg.TLS != nil)
		if err != nil {
			return nil, err
		}
		regs = append(regs, r)
	}
	if !cfg.noShuffle {
		rand.Shuffle(len(regs), func(i, j int) { regs[i], regs[j] = regs[j], regs[i] })
	}
	return regs, nil
}

// parseRegistryAddr reads "[ws://|wss://]host:port[/t/<token>]"; without a scheme the
// address is wss when defaultTLS.
func parseRegistryAddr(s string, defaultTLS bool) (registryAddr, error) {
	r := registryAddr{tls: defaultTLS}
	rest := s
	if scheme, after, ok := strings.Cut(s, "://"); ok {
		switch scheme {
		case "ws":
			r.tls = false
		case "wss":
			r.tls = true
		default:
			return r, fmt.Errorf("wsserver: agent: registry address %q: scheme must be ws:// or wss://", s)
		}
		rest = after
	}
	r.target = rest
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		r.target, r.prefix = rest[:i], strings.TrimSuffix(rest[i:], "/")
	}
	if r.target == "" {
		return r, fmt.Errorf("wsserver: agent: registry address %q: host:port missing", s)
	}
	return r, nil
}

// Registry returns the current registry channel, or nil.
func (a *Agent) Registry() *Channel {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.reg != nil && !a.reg.isDead() {
		return a.reg
	}
	return nil
}

// Connects is the number of successful registry (re)connections; it is
// incremented after online was re-sent for every remembered namespace.
func (a *Agent) Connects() int64 { return a.connects.Load() }

// DefaultRegistryDialTimeout bounds a registry dial when the agent has several registry
// addresses and AgentConfig.DialTimeout is not set: a node that accepts TCP but does not
// answer (paused, overloaded) must not hold failover to a healthy node for the 10 s of
// DefaultDialTimeout. With one address there is nowhere else to go, and the default stays.
const DefaultRegistryDialTimeout = 2 * time.Second

// dialRegistry dials r with the token and, for wss, the TLS config.
func (a *Agent) dialRegistry(ctx context.Context, r registryAddr) (*Channel, error) {
	dc := a.dialConfig()
	if dc.DialTimeout <= 0 && len(a.regs) > 1 {
		dc.DialTimeout = DefaultRegistryDialTimeout
	}
	dc.PathPrefix = r.prefix
	dc.HTTPHeader = a.regHdr
	if r.tls {
		dc.TLS = a.cfg.TLS
		if dc.TLS == nil {
			dc.TLS = &tls.Config{}
		}
	}
	return Dial(ctx, r.target, a.addr, dc)
}

// lost moves next past the address of ch once ch is gone; whoever notices first (ensure
// or watch) does it. The caller holds mu.
func (a *Agent) lostLocked(ch *Channel) {
	if a.reg == ch && ch != nil {
		a.reg = nil
		a.next = (a.regIdx + 1) % len(a.regs)
	}
}

// ensure returns the registry channel, dialing up to attempts addresses in turn (from
// next on) if needed. After a dial it sends online for every remembered namespace
// (errors per namespace in the map) and fresh is true.
func (a *Agent) ensure(ctx context.Context, attempts int) (ch *Channel, fresh bool, errs map[string]error, err error) {
	select {
	case a.dialSem <- struct{}{}:
	case <-ctx.Done():
		return nil, false, nil, ctx.Err()
	}
	defer func() { <-a.dialSem }()
	a.mu.Lock()
	if a.closed.Load() {
		a.mu.Unlock()
		return nil, false, nil, fmt.Errorf("wsserver: agent closed: %w", ErrClosed)
	}
	if a.reg != nil && !a.reg.isDead() {
		ch = a.reg
		a.mu.Unlock()
		return ch, false, nil, nil
	}
	a.lostLocked(a.reg)
	idx := a.next
	a.mu.Unlock()

	var dialErrs []error
	for i := 0; i < attempts; i++ {
		if ch, err = a.dialRegistry(ctx, a.regs[idx]); err == nil {
			break
		}
		dialErrs = append(dialErrs, err)
		idx = (idx + 1) % len(a.regs)
		a.mu.Lock()
		a.next = idx
		a.mu.Unlock()
		if ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		if len(dialErrs) > 1 {
			err = errors.Join(dialErrs...)
		}
		return nil, false, nil, err
	}
	a.mu.Lock()
	if a.closed.Load() {
		a.mu.Unlock()
		ch.Close(websocket.StatusGoingAway, ReasonGoingAway)
		return nil, false, nil, fmt.Errorf("wsserver: agent closed: %w", ErrClosed)
	}
	a.reg, a.regIdx = ch, idx
	nss := append([]string(nil), a.nss...)
	a.mu.Unlock()
	a.wg.Add(1)
	go a.watch(ch)

	errs = make(map[string]error)
	for _, ns := range nss {
		if _, err := ch.Call(ctx, "ws", "online", []string{ns}, 0); err != nil {
			a.log.Warn("online failed", "namespace", ns, "err", err)
			errs[ns] = err
		}
	}
	a.connects.Add(1)
	a.log.Info("connected to registry", "registry", a.regs[idx].target, "tls", a.regs[idx].tls, "namespaces", len(nss))
	return ch, true, errs, nil
}

// watch reconnects when the registry channel ch ends. Addresses are tried in turn, the
// first try of each address other than the lost one at once (failover to another node
// is immediate); once every address was tried, it waits a jittered exponential backoff
// before the next round. With one address, every try waits the backoff.
func (a *Agent) watch(ch *Channel) {
	defer a.wg.Done()
	opened := time.Now()
	select {
	case <-a.ctx.Done():
		return
	case <-ch.Done():
	}
	a.mu.Lock()
	a.lostLocked(ch)
	a.mu.Unlock()
	a.log.Info("registry channel lost", "err", ch.Err())
	delay := a.cfg.ReconnectMin
	if time.Since(opened) < a.cfg.ReconnectMax {
		// It did not live long: do not hammer a registry that accepts and
		// then drops us.
		delay = min(2*delay, a.cfg.ReconnectMax)
	}
	tried := 1 // the lost address counts as tried in this round
	// Every try of the last round was refused with 503 (ErrRefused): a node that drains or
	// is fenced, while others behind the same address (a compose alias, DNS) may take the
	// agent. Backing off further each time would keep the agent away for seconds, longer
	// than a registry keeps the registrations of an agent it moved off a draining node.
	onlyRefused := false
	for {
		if tried >= len(a.regs) {
			// Full jitter in [delay/2, delay].
			d := delay/2 + rand.N(delay/2+1)
			t := time.NewTimer(d)
			select {
			case <-a.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			if !onlyRefused {
				delay = min(2*delay, a.cfg.ReconnectMax)
			}
			tried, onlyRefused = 0, true
		}
		_, _, _, err := a.ensure(a.ctx, 1)
		if err == nil || a.ctx.Err() != nil {
			return // the new channel has its own watcher
		}
		tried++
		if !errors.Is(err, ErrRefused) {
			onlyRefused = false
		}
		a.log.Debug("registry reconnect failed", "err", err)
	}
}
