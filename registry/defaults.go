package registry

import (
	"time"

	"github.com/wsregistry/wsregistry/cluster"
	"github.com/wsregistry/wsregistry/httpapi"
	"github.com/wsregistry/wsregistry/wsserver"
)

// Defaults of Config: what a zero (or non-positive) setting means in Start. The flags of
// cmd/wsregistry and the tests use these names, so each value is written once.
const (
	// DefaultNodeGrace: a member silent this long is purged by the leader, and a node cut off
	// from the leader this long fences itself. Long enough to ride out an election and a GC
	// pause, short enough that agents of a dead node stop being handed out soon after.
	DefaultNodeGrace = 10 * time.Second
	// DefaultInheritWindow: time a replacing connection has to confirm, with online, the
	// namespaces it inherited. An agent that reconnects says online at once.
	DefaultInheritWindow = 10 * time.Second
	// DefaultHandshakeTimeout bounds an agent connection's upgrade request, so half-open
	// handshakes cannot pile up.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultCommitWait bounds how long an agent's online waits for its entry to commit,
	// across leader elections.
	DefaultCommitWait = cluster.DefaultCommitWait
	// DefaultReadLimit is the largest agent message (and POST /v1/fetch body), in bytes.
	DefaultReadLimit = wsserver.DefaultReadLimit

	// DefaultFetchTimeout applies to proxied calls that name no timeout (30 s, as iocore).
	DefaultFetchTimeout = httpapi.DefaultFetchTimeout
	// DefaultFetchTimeoutMax caps the timeout a caller of POST /v1/fetch may ask for.
	DefaultFetchTimeoutMax = httpapi.DefaultFetchTimeoutMax
	// DefaultFetchDialTimeout bounds dialing an agent for a proxied call.
	DefaultFetchDialTimeout = 5 * time.Second

	// Limits (see Limits): generous for one well-behaved host, bounded for a broken one.
	DefaultMaxConnections              = 50000
	DefaultMaxConnectionsPerIP         = 16384
	DefaultMaxRegistrationsPerConn     = 1024
	DefaultMaxRequestsPerSecondPerConn = 10000.0

	// DefaultAPIReadHeaderTimeout bounds a request's headers on the HTTP API port.
	DefaultAPIReadHeaderTimeout = 10 * time.Second
)
