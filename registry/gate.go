package registry

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/wsregistry/wsregistry/auth"
	"github.com/wsregistry/wsregistry/wsserver"
)

// Limits protect a node from one misbehaving agent or host. Zero values take defaults;
// negative values disable a limit.
type Limits struct {
	MaxConnections              int     // agent connections on this node (DefaultMaxConnections)
	MaxConnectionsPerIP         int     // from one source address (DefaultMaxConnectionsPerIP)
	MaxRegistrationsPerConn     int     // namespaces one connection may register (DefaultMaxRegistrationsPerConn)
	MaxRequestsPerSecondPerConn float64 // sustained requests per connection, bursts of twice that (DefaultMaxRequestsPerSecondPerConn)
}

func (l *Limits) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.MaxConnections, DefaultMaxConnections)
	def(&l.MaxConnectionsPerIP, DefaultMaxConnectionsPerIP)
	def(&l.MaxRegistrationsPerConn, DefaultMaxRegistrationsPerConn)
	if l.MaxRequestsPerSecondPerConn == 0 {
		l.MaxRequestsPerSecondPerConn = DefaultMaxRequestsPerSecondPerConn
	}
}

// connCounter counts open agent connections, in total and per source IP.
type connCounter struct {
	total atomic.Int64
	mu    sync.Mutex
	perIP map[string]int
}

func (c *connCounter) acquire(ip string, maxTotal, maxPerIP int) (ok bool, why string) {
	if maxTotal > 0 && c.total.Add(1) > int64(maxTotal) {
		c.total.Add(-1)
		return false, "this registry node has reached its limit of " + strconv.Itoa(maxTotal) + " agent connections"
	} else if maxTotal <= 0 {
		c.total.Add(1)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if maxPerIP > 0 && c.perIP[ip] >= maxPerIP {
		c.total.Add(-1)
		return false, "too many agent connections from " + ip + " (limit " + strconv.Itoa(maxPerIP) + ")"
	}
	c.perIP[ip]++
	return true, ""
}

func (c *connCounter) release(ip string) {
	c.total.Add(-1)
	c.mu.Lock()
	if c.perIP[ip]--; c.perIP[ip] <= 0 {
		delete(c.perIP, ip)
	}
	c.mu.Unlock()
}

// agentGate runs before the WebSocket upgrade: everything refused here costs the node no
// goroutine, no channel and no registration, and the agent gets a status that says why.
func (n *Node) agentGate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.fenced.Load() {
			http.Error(w, "this registry node is fenced (cut off from the cluster leader): connect to another node", http.StatusServiceUnavailable)
			return
		}
		if n.draining.Load() {
			http.Error(w, "this registry node is draining (going away): connect to another node", http.StatusServiceUnavailable)
			return
		}
		grant, path, status, msg := n.auth.Agent(r)
		if status != 0 {
			http.Error(w, msg, status)
			return
		}
		if path != r.URL.Path {
			r.URL.Path, r.URL.RawPath = path, ""
		}
		if grant != nil {
			r = wsserver.WithAuth(r, grant) // online checks the namespaces it may register
		}
		// A newer connection for a host:port replaces the older and inherits its
		// registrations: only with the token the older one holds, or a token limited to
		// other namespaces could take over an agent's (and the calls meant for it).
		if key, err := wsserver.ParseKey(r.URL.Path); err == nil {
			if old := n.ws.Channel(key); old != nil && grantName(agentGrant(old)) != grantName(grant) {
				n.auth.RefuseFrom(r.RemoteAddr, grant, "replace the connection of "+key, auth.ReasonNamespace)
				http.Error(w, "an agent with another token holds the connection for "+key+": only a connection with the same agent token may replace it", http.StatusForbidden)
				return
			}
		}
		srcIP, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			srcIP = r.RemoteAddr
		}
		if n.cfg.VerifyAgentIP {
			key, err := wsserver.ParseKey(r.URL.Path)
			if err == nil {
				if host, _, _ := net.SplitHostPort(key); !sameIP(host, srcIP) {
					http.Error(w, "advertised host "+host+" is not this connection's source address "+srcIP+" (--verify-agent-ip)", http.StatusForbidden)
					return
				}
			}
		}
		ok, why := n.conns.acquire(srcIP, n.cfg.Limits.MaxConnections, n.cfg.Limits.MaxConnectionsPerIP)
		if !ok {
			n.metrics.refused.WithLabelValues("connection_limit").Inc()
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		// The agent server returns once the channel is open; the slot is held until it ends.
		next.ServeHTTP(w, wsserver.WhenClosed(r, func() { n.conns.release(srcIP) }))
	})
}

func grantName(g *auth.Grant) string {
	if g == nil {
		return ""
	}
	return g.Name
}

func sameIP(a, b string) bool {
	ia, ib := net.ParseIP(a), net.ParseIP(b)
	return ia != nil && ib != nil && ia.Equal(ib)
}

// rateLimiter is a token bucket per connection: cheap, no goroutine, no allocation.
type rateLimiter struct {
	mu     sync.Mutex
	tokens float64
	last   int64 // monoNow's nanoseconds (0: the first request, which gets a full bucket)
}

func (l *rateLimiter) allow(now int64, perSecond float64) bool {
	if perSecond < 0 {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	burst := 2 * perSecond
	if l.last == 0 {
		l.tokens = burst
	} else {
		l.tokens = min(burst, l.tokens+float64(now-l.last)/1e9*perSecond)
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}
