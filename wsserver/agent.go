package wsserver

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// AgentConfig configures an Agent.
type AgentConfig struct {
	// Registries are the addresses of the registry's nodes, each "host:port",
	// optionally with a "/t/<token>" path prefix (passed through when dialing)
	// and a "ws://" or "wss://" scheme (without one: wss when TLS is set, else
	// ws). The agent shuffles them once and moves to the next whenever the
	// registry connection fails to dial or closes. Empty: Registry alone.
	Registries []string
	Registry   string // one address, as in Registries; used when Registries is empty

	TLS   *tls.Config // for wss:// registry addresses (nil: the system's roots)
	Token string      // sent as "Authorization: Bearer <token>" when dialing the registry

	Listen    string // default ":0"; the agent's own micro-ws server
	Advertise string // "ip:port", or "ip" (or "ip:0") for that ip + the listen port; default: first non-loopback IPv4 of the machine + the listen port
	Mux       *Mux   // default: a new Mux (see Agent.Handle)
	Logger    *slog.Logger

	ReconnectMin, ReconnectMax time.Duration // backoff for the registry connection (defaults DefaultReconnectMin, DefaultReconnectMax)

	// Channel settings for the agent's server and the channels it dials
	// (zero: defaults).
	PingInterval time.Duration
	DialTimeout  time.Duration

	noShuffle bool // tests: try Registries in the given order
}

// Agent is a Go micro-ws agent: it serves its Mux on its own server and on
// every channel it dials, registers namespaces with the registry (again after
// every reconnect, on the next registry address when a node fails), and looks
// up and calls other agents.
type Agent struct {
	cfg  AgentConfig
	mux  *Mux
	log  *slog.Logger
	addr string

	ln     net.Listener
	server *Server
	httpS  *http.Server

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	regs    []registryAddr // shuffled once
	regHdr  http.Header    // the token, when set
	dialSem chan struct{}  // one registry dial at a time
	mu      sync.Mutex
	reg     *Channel
	regIdx  int // regs[regIdx] is where reg was dialed
	// next is the index in regs to dial next: the connected address while reg
	// lives, the one after it once reg is lost or a dial failed.
	next     int
	nss      []string // remembered namespaces, in order
	connects atomic.Int64
	closed   atomic.Bool // set under mu

	peers *Pool
}

// NewAgent starts listening immediately (so Addr is known). It does not
// contact the registry before Online, Where or Fetch.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	regs, err := parseRegistries(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.Listen == "" {
		cfg.Listen = ":0"
	}
	if cfg.ReconnectMin <= 0 {
		cfg.ReconnectMin = DefaultReconnectMin
	}
	if cfg.ReconnectMax <= 0 {
		cfg.ReconnectMax = DefaultReconnectMax
	}
	if cfg.ReconnectMax < cfg.ReconnectMin {
		cfg.ReconnectMax = cfg.ReconnectMin
	}
	a := &Agent{
		cfg:     cfg,
		mux:     cfg.Mux,
		log:     cfg.Logger,
		dialSem: make(chan struct{}, 1),
	}
	if a.mux == nil {
		a.mux = NewMux()
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	a.regs = regs
	if cfg.Token != "" {
		a.regHdr = http.Header{"Authorization": {"Bearer " + cfg.Token}}
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("wsserver: agent: listen: %w", err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	switch h, p, err := net.SplitHostPort(cfg.Advertise); {
	case cfg.Advertise == "":
		a.addr = firstIPv4() + ":" + port
	case err != nil: // a bare host: add the listen port
		a.addr = cfg.Advertise + ":" + port
	case p == "0" || p == "":
		a.addr = h + ":" + port
	default:
		a.addr = cfg.Advertise
	}
	a.ln = ln
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.server = NewServer(ServerConfig{ChannelConfig: ChannelConfig{Mux: a.mux, PingInterval: cfg.PingInterval, Logger: a.log}})
	a.peers = NewPool(a.server, a.addr, a.dialConfig())
	a.httpS = &http.Server{Handler: a.server, ReadHeaderTimeout: 10 * time.Second}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.httpS.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("agent server stopped", "err", err)
		}
	}()
	return a, nil
}

// firstIPv4 is the first non-loopback IPv4 address of the machine, else 127.0.0.1.
func firstIPv4() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, ad := range addrs {
			if ipn, ok := ad.(*net.IPNet); ok {
				if ip4 := ipn.IP.To4(); ip4 != nil && !ip4.IsLoopback() {
					return ip4.String()
				}
			}
		}
	}
	return "127.0.0.1"
}

// Addr is the advertised "host:port": what the registry's where returns.
func (a *Agent) Addr() string { return a.addr }

// Handle registers a handler on the agent's Mux.
func (a *Agent) Handle(protocol, cmd string, h HandlerFunc) { a.mux.Handle(protocol, cmd, h) }

func (a *Agent) dialConfig() DialConfig {
	return DialConfig{ChannelConfig: ChannelConfig{Mux: a.mux, PingInterval: a.cfg.PingInterval, Logger: a.log}, DialTimeout: a.cfg.DialTimeout}
}

// Online registers the agent under each namespace (connecting to the registry
// if needed) and remembers them: after losing the registry channel, the agent
// reconnects with backoff and sends online for all of them again.
func (a *Agent) Online(ctx context.Context, namespaces ...string) error {
	a.mu.Lock()
	for _, ns := range namespaces {
		found := false
		for _, have := range a.nss {
			if have == ns {
				found = true
				break
			}
		}
		if !found {
			a.nss = append(a.nss, ns)
		}
	}
	a.mu.Unlock()
	ch, fresh, errs, err := a.ensure(ctx, len(a.regs))
	if err != nil {
		return err
	}
	var all []error
	for _, ns := range namespaces {
		if fresh {
			if e := errs[ns]; e != nil {
				all = append(all, fmt.Errorf("online %q: %w", ns, e))
			}
			continue
		}
		if _, e := ch.Call(ctx, "ws", "online", []string{ns}, 0); e != nil {
			all = append(all, fmt.Errorf("online %q: %w", ns, e))
		}
	}
	return errors.Join(all...)
}

// Where asks the registry for an instance of namespace.
func (a *Agent) Where(ctx context.Context, namespace string) (addr string, found bool, err error) {
	ch, _, _, err := a.ensure(ctx, len(a.regs))
	if err != nil {
		return "", false, err
	}
	res, err := ch.Call(ctx, "ws", "where", []string{namespace}, 0)
	if err != nil {
		return "", false, err
	}
	if res == nil || string(res) == "null" {
		return "", false, nil
	}
	if err := json.Unmarshal(res, &addr); err != nil {
		return "", false, fmt.Errorf("wsserver: where %q: unexpected answer %s", namespace, clip(res))
	}
	return addr, addr != "", nil
}

// Fetch calls "<namespace>/<path>" like iocore's createFetcher: where, then
// reuse or dial the channel to that address (cached per address until it
// closes), then call cmd "/<path>". An unknown namespace fails with
// &Error{Status: 404, Message: "Cannot find the namepsace of <ns> from registry"}.
func (a *Agent) Fetch(ctx context.Context, protocol, url string, props any, timeout time.Duration) (json.RawMessage, error) {
	ns, path := url, "/"
	if i := strings.IndexByte(url, '/'); i >= 0 {
		ns, path = url[:i], url[i:]
	}
	addr, found, err := a.Where(ctx, ns)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, &Error{Status: 404, Message: "Cannot find the namepsace of " + ns + " from registry"}
	}
	ch, err := a.peer(ctx, addr)
	if err != nil {
		return nil, err
	}
	return ch.Call(ctx, protocol, path, props, timeout)
}

// peer returns a live channel to addr: one the peer opened to us, else a
// pooled dialed one, else a new dial (concurrent dials collapse into one).
func (a *Agent) peer(ctx context.Context, addr string) (*Channel, error) {
	if a.closed.Load() {
		return nil, fmt.Errorf("wsserver: agent closed: %w", ErrClosed)
	}
	return a.peers.Get(ctx, addr)
}

// Close stops the agent: closes the registry channel (which deregisters it),
// every peer channel and its server.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed.Load() {
		a.mu.Unlock()
		return nil
	}
	a.closed.Store(true)
	reg := a.reg
	a.mu.Unlock()
	a.cancel() // stops reconnecting and pending dials
	a.peers.Close()
	if reg != nil {
		reg.Close(websocket.StatusGoingAway, ReasonGoingAway)
		<-reg.Done()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := a.server.Shutdown(ctx)
	if e := a.httpS.Shutdown(ctx); e != nil && err == nil {
		err = e
	}
	a.wg.Wait()
	return err
}
