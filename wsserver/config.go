package wsserver

import (
	"log/slog"
	"time"
)

// Defaults: what a zero (or, where said, non-positive) setting means. Flags, configs and
// tests that want the same value use these names.
const (
	DefaultReadLimit    = 1 << 20          // ChannelConfig.ReadLimit, bytes per message
	DefaultPingInterval = 10 * time.Second // ChannelConfig.PingInterval
	DefaultPingMisses   = 3                // ChannelConfig.PingMisses
	DefaultWriteTimeout = 10 * time.Second // ChannelConfig.WriteTimeout
	DefaultSendQueue    = 32               // ChannelConfig.SendQueue, frames
	DefaultCloseTimeout = time.Second      // ChannelConfig.CloseTimeout
	// DefaultMaxInflight bounds the requests one peer may have running at once; more are
	// answered 429 at once, so a peer cannot make us hold unbounded goroutines.
	DefaultMaxInflight = 1024

	DefaultCallTimeout    = 30 * time.Second       // Channel.Call with a timeout <= 0
	DefaultReplaceTimeout = 5 * time.Second        // ServerConfig.ReplaceTimeout
	DefaultDialTimeout    = 10 * time.Second       // DialConfig.DialTimeout
	DefaultPeekTimeout    = 10 * time.Second       // NewSniffListener with a peekTimeout <= 0
	DefaultReconnectMin   = 100 * time.Millisecond // AgentConfig.ReconnectMin
	DefaultReconnectMax   = 5 * time.Second        // AgentConfig.ReconnectMax
)

// ChannelConfig holds the settings of a channel, the same whether it was accepted
// (ServerConfig) or dialed (DialConfig). Zero values mean the defaults.
type ChannelConfig struct {
	// Mux serves the peer's requests; nil: a new Mux, so every request is answered 104.
	Mux          *Mux
	ReadLimit    int64         // default DefaultReadLimit (1 MiB); a larger message closes the channel with 1009
	PingInterval time.Duration // default DefaultPingInterval (10 s); 0 means default, negative disables
	PingMisses   int           // default DefaultPingMisses (3): close after this many consecutive missed pongs
	WriteTimeout time.Duration // default DefaultWriteTimeout (10 s) per write
	// SendQueue is the writer's queue in frames (default DefaultSendQueue, 32); a reply
	// that finds it full waits up to WriteTimeout, then the channel closes (1008 "slow consumer").
	SendQueue    int
	CloseTimeout time.Duration // default DefaultCloseTimeout (1 s): a close handshake taking longer drops the connection

	// OnClose is called once the channel has ended, after every handler of that channel
	// has returned (their contexts are cancelled on close); ch.Err tells why it ended.
	// A Server calls it for every channel that got OnOpen, after Server.Channel stopped
	// returning it.
	OnClose func(ch *Channel)
	// OnIgnored is called for a message that was ignored (not JSON, bad frame, response
	// to no outstanding request). May be nil.
	OnIgnored func(ch *Channel, reason string)
	Logger    *slog.Logger // default slog.Default()
}

// chanConfig is the immutable per-channel configuration, shared by all the
// channels of one Server (or one Dial).
type chanConfig struct {
	mux          *Mux
	readLimit    int64
	pingInterval time.Duration // <0: disabled
	pingMisses   int
	writeTimeout time.Duration
	sendQueue    int
	closeTimeout time.Duration
	onIgnored    func(*Channel, string)
	onClose      func(*Channel)
	log          *slog.Logger
	libraryReads bool // tests: read every frame through coder/websocket (no frameReader)
}

// newChanConfig resolves cfg's defaults.
func newChanConfig(cfg ChannelConfig, libraryReads bool) chanConfig {
	c := chanConfig{
		mux:          cfg.Mux,
		readLimit:    cfg.ReadLimit,
		pingInterval: cfg.PingInterval,
		pingMisses:   cfg.PingMisses,
		writeTimeout: cfg.WriteTimeout,
		sendQueue:    cfg.SendQueue,
		closeTimeout: cfg.CloseTimeout,
		onIgnored:    cfg.OnIgnored,
		onClose:      cfg.OnClose,
		log:          cfg.Logger,
		libraryReads: libraryReads,
	}
	if c.mux == nil {
		c.mux = NewMux()
	}
	if c.readLimit <= 0 {
		c.readLimit = DefaultReadLimit
	}
	if c.pingInterval == 0 {
		c.pingInterval = DefaultPingInterval
	}
	if c.pingMisses <= 0 {
		c.pingMisses = DefaultPingMisses
	}
	if c.writeTimeout <= 0 {
		c.writeTimeout = DefaultWriteTimeout
	}
	if c.sendQueue <= 0 {
		c.sendQueue = DefaultSendQueue
	}
	if c.closeTimeout <= 0 {
		c.closeTimeout = DefaultCloseTimeout
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	return c
}
