package wsserver

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// tlsRequiredBody is what a plain client gets on a listener that requires TLS.
const tlsRequiredBody = "this port requires TLS: connect with wss:// (or https://); " +
	"plain ws:// agents are accepted only when the registry's --agent-tls setting allows them\n"

// NewSniffListener serves TLS and, when allowPlain, plain connections on one port: unchanged
// iocore agents can only speak ws://, so a registry with TLS on keeps one agent port for
// ws:// and wss:// side by side.
//
// Accept returns tls.Server(conn, cfg) (exactly a *tls.Conn, so net/http performs the
// handshake under its own timeouts and sets r.TLS) for a connection whose first byte is 0x16
// (a TLS handshake record), else the plain connection, or, when !allowPlain, a plain HTTP 400
// saying TLS is required is written and the connection closed. With a nil cfg TLS clients are
// closed. The first byte is read in a goroutine per connection with peekTimeout as its read
// deadline (<= 0: DefaultPeekTimeout), so a silent client never holds up the others; one that
// sends nothing in time is closed. Close closes ln and the connections still being peeked.
func NewSniffListener(ln net.Listener, cfg *tls.Config, allowPlain bool, peekTimeout time.Duration) net.Listener {
	if peekTimeout <= 0 {
		peekTimeout = DefaultPeekTimeout
	}
	l := &sniffListener{
		inner:      ln,
		cfg:        cfg,
		allowPlain: allowPlain,
		timeout:    peekTimeout,
		ready:      make(chan net.Conn),
		errc:       make(chan error),
		failed:     make(chan struct{}),
		done:       make(chan struct{}),
		peeking:    make(map[net.Conn]struct{}),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

type sniffListener struct {
	inner      net.Listener
	cfg        *tls.Config
	allowPlain bool
	timeout    time.Duration

	ready  chan net.Conn  // sniffed connections for Accept
	errc   chan error     // temporary errors of the inner Accept, passed on so the caller backs off
	failed chan struct{}  // closed when the inner Accept failed for good (failErr)
	done   chan struct{}  // closed by Close
	wg     sync.WaitGroup // acceptLoop and sniff goroutines

	failErr   error
	closeOnce sync.Once
	closeErr  error

	mu      sync.Mutex
	peeking map[net.Conn]struct{} // closed by Close
	closed  bool
}

func (l *sniffListener) Accept() (net.Conn, error) {
	select {
	case <-l.done: // no connection handed out after Close
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.ready:
		return c, nil
	case err := <-l.errc:
		return nil, err
	case <-l.failed:
		return nil, l.failErr
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *sniffListener) Addr() net.Addr { return l.inner.Addr() }

func (l *sniffListener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.closeErr = l.inner.Close()
		l.mu.Lock()
		l.closed = true
		for c := range l.peeking {
			_ = c.Close()
		}
		l.mu.Unlock()
		l.wg.Wait()
	})
	return l.closeErr
}

func (l *sniffListener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.inner.Accept()
		if err != nil {
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				// Handed to Accept (unbuffered): the caller's backoff (net/http sleeps
				// on temporary errors) paces this loop too.
				select {
				case l.errc <- err:
					continue
				case <-l.done:
					return
				}
			}
			select {
			case <-l.done:
			default:
				l.failErr = err
				close(l.failed)
			}
			return
		}
		if !l.track(c) {
			_ = c.Close()
			return
		}
		l.wg.Add(1)
		go l.sniff(c)
	}
}

// track registers c as being peeked; false after Close.
func (l *sniffListener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.peeking[c] = struct{}{}
	return true
}

func (l *sniffListener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.peeking, c)
	l.mu.Unlock()
}

func (l *sniffListener) sniff(c net.Conn) {
	defer l.wg.Done()
	var b [1]byte
	_ = c.SetReadDeadline(time.Now().Add(l.timeout))
	if _, err := io.ReadFull(c, b[:]); err != nil {
		l.untrack(c)
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	pc := &peekedConn{Conn: c, first: b[0], pending: true}
	var out net.Conn
	switch {
	case b[0] == 0x16 && l.cfg != nil:
		out = tls.Server(pc, l.cfg)
	case b[0] == 0x16:
		l.untrack(c)
		_ = c.Close()
		return
	case l.allowPlain:
		out = pc
	default:
		l.refuse(c) // still tracked: Close cuts its linger short
		l.untrack(c)
		return
	}
	l.untrack(c)
	select {
	case l.ready <- out:
	case <-l.done:
		_ = c.Close()
	}
}

// refuse answers a plain client on a TLS-only port with a 400 and closes the connection.
func (l *sniffListener) refuse(c net.Conn) {
	defer c.Close()
	resp := "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(tlsRequiredBody)) + "\r\n\r\n" + tlsRequiredBody
	_ = c.SetWriteDeadline(time.Now().Add(l.timeout))
	if _, err := io.WriteString(c, resp); err != nil {
		return
	}
	// Closing with the request unread would reset the connection, and the client could
	// lose the answer: send FIN, then read until the client closes (bounded).
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(min(l.timeout, time.Second)))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

// peekedConn gives back the byte the listener read to tell TLS from plain.
type peekedConn struct {
	net.Conn
	first   byte
	pending bool
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if c.pending && len(p) > 0 {
		p[0], c.pending = c.first, false
		return 1, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite keeps the half-close of the TCP connection underneath (net/http uses it
// before closing after an error response).
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
