package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// wsConn is a minimal client side of RFC 6455 for fake agents: text frames
// only, no fragmentation on send, pings answered. It exists because the
// generator shares two cores with three registry nodes: a pipelined,
// one-goroutine-per-connection client that batches its writes costs far less
// CPU than one SDK Call (timer, channel, goroutine) per request, so more of
// the machine is left to the servers being measured. The bytes on the wire
// are the ones an iocore agent sends (masked client frames; the mask key is
// zero, which RFC 6455 permits), but not the writes: the agent pattern
// (agent.go) sends each frame in its own write with a random key, as agents do.
type wsConn struct {
	nc  net.Conn
	br  *bufio.Reader
	wmu sync.Mutex // pongs from an idle reader vs request writes
	key string     // our agent identity host:port
}

var errClosed = errors.New("connection closed by server")

// dialWS opens ws://target/<host>/<port> as the agent "host:port".
func dialWS(target, agentKey string, timeout time.Duration, bufSize int) (*wsConn, error) {
	host, port, err := net.SplitHostPort(agentKey)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: timeout}
	nc, err := d.Dial("tcp", target)
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	req := "GET /" + host + "/" + port + " HTTP/1.1\r\nHost: " + target +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		nc.Close()
		return nil, err
	}
	if bufSize <= 0 {
		bufSize = 16 << 10
	}
	br := bufio.NewReaderSize(nc, bufSize)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("handshake with %s: %w", target, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		nc.Close()
		return nil, fmt.Errorf("handshake with %s: HTTP %d", target, resp.StatusCode)
	}
	_ = nc.SetDeadline(time.Time{})
	return &wsConn{nc: nc, br: br, key: agentKey}, nil
}

func (c *wsConn) Close() error { return c.nc.Close() }

// appendFrame appends one masked (zero key) client frame.
func appendFrame(b []byte, opcode byte, payload []byte) []byte {
	b = append(b, 0x80|opcode)
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 1<<16:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	b = append(b, 0, 0, 0, 0)
	return append(b, payload...)
}

// appendRequest appends a masked text frame holding an iocore request.
func appendRequest(b []byte, id int64, cmd, ns string) []byte {
	var tmp [160]byte
	p := tmp[:0]
	p = append(p, `{"id":`...)
	p = strconv.AppendInt(p, id, 10)
	p = append(p, `,"twoway":true,"data":{"cmd":"`...)
	p = append(p, cmd...)
	p = append(p, `","props":["`...)
	p = append(p, ns...)
	p = append(p, `"],"protocol":"ws"},"mode":0}`...)
	return appendFrame(b, 1, p)
}

func (c *wsConn) write(b []byte) error {
	c.wmu.Lock()
	_, err := c.nc.Write(b)
	c.wmu.Unlock()
	return err
}

// readMessage returns the next text/binary payload (valid until the next
// call), answering pings on the way.
func (c *wsConn) readMessage(scratch []byte) ([]byte, error) {
	return c.readMessageFlushing(scratch, nil)
}

// readMessageFlushing is readMessage that calls flush before it would wait for the
// socket: a pipelining caller's unsent requests must leave before it waits for
// their replies (a ping read between replies once left them unsent for good).
func (c *wsConn) readMessageFlushing(scratch []byte, flush func() error) ([]byte, error) {
	for {
		if flush != nil && c.br.Buffered() < 2 {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		op, p, err := readFrame(c.br, scratch, math.MaxInt32)
		if err != nil {
			return nil, err
		}
		scratch = p[:0]
		switch op {
		case 1, 2, 0:
			return p, nil
		case 8:
			_ = c.write(appendFrame(nil, 8, p[:min(len(p), 2)]))
			return nil, errClosed
		case 9:
			if err := c.write(appendFrame(nil, 10, p)); err != nil {
				return nil, err
			}
		}
	}
}

// readFrame reads one WebSocket frame from br: its opcode and its payload, unmasked when the
// frame is masked (in scratch when it is large enough). Frames over max bytes are an error.
func readFrame(br *bufio.Reader, scratch []byte, max uint64) (op byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	if n >= 126 {
		var buf [8]byte
		ext := buf[:2]
		if n == 127 {
			ext = buf[:8]
		}
		if _, err := io.ReadFull(br, ext); err != nil {
			return 0, nil, err
		}
		n = 0
		for _, b := range ext {
			n = n<<8 | uint64(b)
		}
	}
	if n > max {
		return 0, nil, fmt.Errorf("frame of %d bytes, the limit is %d", n, max)
	}
	var key [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(br, key[:]); err != nil {
			return 0, nil, err
		}
	}
	if uint64(cap(scratch)) < n {
		scratch = make([]byte, n)
	}
	payload = scratch[:n]
	if _, err := io.ReadFull(br, payload); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range payload {
			payload[i] ^= key[i&3]
		}
	}
	return h[0] & 0x0f, payload, nil
}

// idle reads and discards until the connection ends, answering pings; it
// returns when the connection fails (used by connections that only hold
// registrations).
func (c *wsConn) idle() error {
	var scratch []byte
	for {
		p, err := c.readMessage(scratch)
		if err != nil {
			return err
		}
		scratch = p[:0]
	}
}

// parseReply extracts the id and whether the status is 200 from a reply
// {"id":N,"mode":1,"twoway":false,"data":{"status":S,...}}.
func parseReply(p []byte) (id int64, ok bool, err error) {
	const pre = `{"id":`
	if !bytes.HasPrefix(p, []byte(pre)) {
		return 0, false, fmt.Errorf("unexpected message %.60q", p)
	}
	i := len(pre)
	for i < len(p) && p[i] >= '0' && p[i] <= '9' {
		id = id*10 + int64(p[i]-'0')
		i++
	}
	return id, bytes.Contains(p[i:], []byte(`"status":200`)), nil
}

// agentKeys hands out distinct fake agent identities 127.0.7.<x>:<port>.
type agentKeys struct {
	mu   sync.Mutex
	ip   int
	port int
}

func newAgentKeys(firstIP int) *agentKeys { return &agentKeys{ip: firstIP, port: 1024} }

func (k *agentKeys) next(prefix string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.port > 65535 {
		k.port = 1024
		k.ip++
	}
	s := prefix + strconv.Itoa(k.ip) + ":" + strconv.Itoa(k.port)
	k.port++
	return s
}
