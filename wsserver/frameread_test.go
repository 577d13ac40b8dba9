package wsserver

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// maskedFrame builds one client frame of any length, with the header bits given as is
// (b0: FIN, RSV and opcode), masked unless unmasked is set.
func maskedFrame(b0 byte, payload []byte, unmasked bool) []byte {
	f := []byte{b0, 0}
	switch n := len(payload); {
	case n < 126:
		f[1] = byte(n)
	case n <= 0xffff:
		f[1] = 126
		f = binary.BigEndian.AppendUint16(f, uint16(n))
	default:
		f[1] = 127
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	if unmasked {
		return append(f, payload...)
	}
	f[1] |= 0x80
	mask := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	f = append(f, mask[:]...)
	for i, c := range payload {
		f = append(f, c^mask[i%4])
	}
	return f
}

func textFrame(s string) []byte { return maskedFrame(0x81, []byte(s), false) }

// oneWay is a request that gets no reply: served before a frame that makes the library
// close the connection, as a reply it held could leave before the close or not.
func oneWay(id int) []byte {
	return textFrame(fmt.Sprintf(`{"id":%d,"twoway":false,"data":{"cmd":"/echo","props":[%d],"protocol":"ws"},"mode":0}`, id, id))
}

func echoReq(id int, props string) string {
	return fmt.Sprintf(`{"id":%d,"twoway":true,"data":{"cmd":"/echo","props":%s,"protocol":"ws"},"mode":0}`, id, props)
}

// readAnyServerFrame reads one unmasked server frame of any length.
func readAnyServerFrame(br *bufio.Reader) (opcode byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(br, l[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(l[:])
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(br, payload)
	return h[0] & 0x0f, payload, err
}

// converse sends the frames in chunks cut by split, then a last request (id 999) and,
// once that is answered, a close frame. It returns what the server sent: its data frames
// in order, then its control frames (a pong may overtake replies held for one write),
// then its close frame as code and reason.
func converse(t *testing.T, addr string, frames [][]byte, split func(int) int) []string {
	t.Helper()
	nc, br := rawTCPHandshake(t, addr, "/10.0.0.9/30")
	wire := bytes.Join(append(frames, textFrame(echoReq(999, "[999]"))), nil)
	written := make(chan struct{})
	defer func() { nc.Close(); <-written }()
	go func() {
		defer close(written)
		for len(wire) > 0 {
			n := min(split(len(wire)), len(wire))
			if _, err := nc.Write(wire[:n]); err != nil {
				return
			}
			wire = wire[n:]
		}
	}()
	nc.SetReadDeadline(time.Now().Add(scaled(10 * time.Second)))
	var data, control []string
	for {
		op, payload, err := readAnyServerFrame(br)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("no close from the server; so far: %q %q", data, control)
			}
			return append(data, control...) // dropped without a close frame
		}
		switch {
		case op == 0x8:
			code := 0
			if len(payload) >= 2 {
				code = int(binary.BigEndian.Uint16(payload))
				payload = payload[2:]
			}
			return append(append(data, control...), fmt.Sprintf("close %d %s", code, payload))
		case op >= 0x8:
			control = append(control, fmt.Sprintf("op%d %s", op, payload))
		default:
			if bytes.HasPrefix(payload, []byte(`{"id":999,`)) {
				_, _ = nc.Write(maskedFrame(0x88, []byte{0x03, 0xe8}, false))
			}
			if len(payload) > 80 {
				payload = fmt.Appendf(nil, "%s...(%d bytes)", payload[:80], len(payload))
			}
			data = append(data, fmt.Sprintf("op%d %s", op, payload))
		}
	}
}

// The accepting end's frameReader serves plain text frames itself and hands every
// other frame to coder/websocket. Whatever the frames and however TCP cuts them, the
// client must see exactly what the library alone would have sent.
func TestFrameReader_AnswersExactlyAsTheLibraryAlone(t *testing.T) {
	big := `["` + strings.Repeat("b", 70_000) + `"]` // past maxServedText: through the library
	mid := `["` + strings.Repeat("m", 40_000) + `"]` // a 16-bit length, served
	scripts := map[string]struct {
		frames [][]byte
		want   []string // what the server must send, when given
	}{
		"plain requests": {
			frames: [][]byte{textFrame(echoReq(1, "[1]")), textFrame(echoReq(2, "[2]")), textFrame(echoReq(3, mid))},
			want: []string{`op1 {"id":1,"mode":1,"twoway":false,"data":{"status":200,"data":[1]}}`,
				`op1 {"id":2,"mode":1,"twoway":false,"data":{"status":200,"data":[2]}}`,
				`op1 {"id":3,"mode":1,"twoway":false,"data":{"status":200,"data":["mmmmmmmmmmmmmmmmmm...(40066 bytes)`,
				`op1 {"id":999,"mode":1,"twoway":false,"data":{"status":200,"data":[999]}}`,
				"close 1000 "},
		},
		"ping, fragments, binary and a long message between requests": {
			frames: [][]byte{
				textFrame(echoReq(1, "[1]")),
				maskedFrame(0x89, []byte("are you there"), false),
				maskedFrame(0x01, []byte(echoReq(2, "[2]")[:20]), false), // fragmented text
				maskedFrame(0x8a, []byte("unsolicited pong"), false),
				maskedFrame(0x80, []byte(echoReq(2, "[2]")[20:]), false),
				textFrame(echoReq(3, "[3]")),
				maskedFrame(0x82, []byte(echoReq(4, "[4]")), false), // binary
				textFrame(echoReq(5, big)),
				textFrame(echoReq(6, "[6]")),
				textFrame("not json"),
			},
			want: []string{`op1 {"id":1,"mode":1,"twoway":false,"data":{"status":200,"data":[1]}}`,
				`op1 {"id":2,"mode":1,"twoway":false,"data":{"status":200,"data":[2]}}`,
				`op1 {"id":3,"mode":1,"twoway":false,"data":{"status":200,"data":[3]}}`,
				`op1 {"id":4,"mode":1,"twoway":false,"data":{"status":200,"data":[4]}}`,
				`op1 {"id":5,"mode":1,"twoway":false,"data":{"status":200,"data":["bbbbbbbbbbbbbbbbbb...(70066 bytes)`,
				`op1 {"id":6,"mode":1,"twoway":false,"data":{"status":200,"data":[6]}}`,
				`op1 {"id":999,"mode":1,"twoway":false,"data":{"status":200,"data":[999]}}`,
				"op10 are you there",
				"close 1000 "},
		},
		"invalid UTF-8": {
			frames: [][]byte{textFrame(echoReq(1, "[1]")), textFrame("{\"id\":2,\xff}"), textFrame(echoReq(3, "[3]"))},
			want:   []string{`op1 {"id":1,"mode":1,"twoway":false,"data":{"status":200,"data":[1]}}`, "close 1007 invalid UTF-8"},
		},
		"RSV1 set": {
			frames: [][]byte{oneWay(1), maskedFrame(0xc1, []byte(echoReq(2, "[2]")), false), textFrame(echoReq(3, "[3]"))},
		},
		"unmasked": {
			frames: [][]byte{oneWay(1), maskedFrame(0x81, []byte(echoReq(2, "[2]")), true), textFrame(echoReq(3, "[3]"))},
		},
		"continuation without a start": {
			frames: [][]byte{maskedFrame(0x80, []byte(echoReq(1, "[1]")), false), textFrame(echoReq(2, "[2]"))},
		},
		"new message inside a fragmented one": {
			frames: [][]byte{maskedFrame(0x01, []byte(`{"id":1,`), false), textFrame(echoReq(2, "[2]")), textFrame(echoReq(3, "[3]"))},
		},
		"over the read limit": {
			frames: [][]byte{oneWay(1), textFrame(echoReq(2, `["`+strings.Repeat("x", 300_000)+`"]`)), textFrame(echoReq(3, "[3]"))},
		},
		"length with the top bit set": {
			frames: [][]byte{oneWay(1), {0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 'x', 'x', 'x', 'x', 'x'}},
		},
	}
	// Each conversation cuts its bytes afresh, so both servers get the same cuts.
	splits := map[string]func() func(int) int{
		"whole":        func() func(int) int { return func(n int) int { return n } },
		"byte by byte": func() func(int) int { return func(int) int { return 1 } },
		"random cuts": func() func(int) int {
			r := rand.New(rand.NewPCG(1, 2))
			return func(int) int { return 1 + r.IntN(700) }
		},
	}
	servers := map[bool]string{} // libraryReads -> address
	for _, lib := range []bool{false, true} {
		mux := NewMux()
		mux.HandleInline("ws", "/echo", echoHandler)
		_, servers[lib] = startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1, ReadLimit: 200_000, CloseTimeout: 200 * time.Millisecond}, libraryReads: lib})
	}
	for name, sc := range scripts {
		for how, split := range splits {
			t.Run(name+"/"+how, func(t *testing.T) {
				if how == "byte by byte" && len(bytes.Join(sc.frames, nil)) > 10_000 {
					// a 70 KB message byte by byte is just slow
					split = func() func(int) int { return func(int) int { return 97 } }
				}
				library := converse(t, servers[true], sc.frames, split())
				ours := converse(t, servers[false], sc.frames, split())
				if strings.Join(ours, "\n") != strings.Join(library, "\n") {
					t.Fatalf("with the frameReader:\n  %s\nthe library alone:\n  %s", strings.Join(ours, "\n  "), strings.Join(library, "\n  "))
				}
				if sc.want != nil && strings.Join(ours, "\n") != strings.Join(sc.want, "\n") {
					t.Fatalf("got:\n  %s\nwant:\n  %s", strings.Join(ours, "\n  "), strings.Join(sc.want, "\n  "))
				}
				if len(ours) == 0 || !strings.HasPrefix(ours[len(ours)-1], "close ") {
					t.Fatalf("the server did not end with a close frame: %q", ours)
				}
			})
		}
	}
}

// frameReader alone, on a pipe: served frames never reach the library, handed-over
// frames reach it byte for byte and in order, and an idle reader keeps no buffer.
func TestFrameReader_ServesTextAndHandsOverTheRest(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	var served []string
	fr := &frameReader{conn: a, maxText: 1000, onText: func(m []byte) { served = append(served, string(m)) }}
	ping := maskedFrame(0x89, []byte("ping!"), false)
	bin := maskedFrame(0x82, []byte("binary"), false)
	long := maskedFrame(0x81, bytes.Repeat([]byte("L"), 1500), false)
	wire := bytes.Join([][]byte{textFrame("one"), textFrame("two"), ping, textFrame("three"), bin, long, textFrame("four")}, nil)
	go func() { _, _ = b.Write(wire); b.Close() }()

	var handed []byte
	p := make([]byte, 64) // a small buffer: frames straddle reads
	var lastServed []int  // len(served) after each Read
	for {
		n, err := fr.Read(p)
		handed = append(handed, p[:n]...)
		lastServed = append(lastServed, len(served))
		if err != nil {
			if err != io.EOF {
				t.Fatal(err)
			}
			break
		}
	}
	if got, want := strings.Join(served, ","), "one,two,three,four"; got != want {
		t.Errorf("served %q, want %q", got, want)
	}
	if want := bytes.Join([][]byte{ping, bin, long}, nil); !bytes.Equal(handed, want) {
		t.Errorf("handed over %d bytes, want the ping, binary and long frames (%d bytes) exactly", len(handed), len(want))
	}
	// "three" comes after the ping: it may only be served once the ping was handed over.
	if lastServed[0] != 2 {
		t.Errorf("first Read returned with %d frames served, want 2 (one, two; then the ping)", lastServed[0])
	}
	if fr.carry != nil {
		t.Errorf("carry holds %d bytes (cap %d) after everything was consumed", len(fr.carry), cap(fr.carry))
	}
}

func TestUnmask_MatchesTheBytewiseDefinition(t *testing.T) {
	key := [4]byte{0xde, 0xad, 0xbe, 0xef}
	for n := range 40 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i * 7)
		}
		want := bytes.Clone(b)
		for i := range want {
			want[i] ^= key[i%4]
		}
		unmask(b, key)
		if !bytes.Equal(b, want) {
			t.Fatalf("n=%d: %x, want %x", n, b, want)
		}
	}
}

// chunkConn returns its bytes in reads cut by cuts (cycled), then io.EOF.
type chunkConn struct {
	net.Conn
	data []byte
	cuts []byte
	i    int
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(c.data)
	if len(c.cuts) > 0 {
		n = 1 + int(c.cuts[c.i%len(c.cuts)])
		c.i++
	}
	n = copy(p, c.data[:min(n, len(c.data))])
	c.data = c.data[n:]
	return n, nil
}

// frameEvents is what a frameReader did, in order: "S"+message for a served frame,
// "H"+bytes for bytes handed over (consecutive ones merged).
type frameEvents []string

func (e *frameEvents) handed(b []byte) {
	if len(b) == 0 {
		return
	}
	if n := len(*e); n > 0 && (*e)[n-1][0] == 'H' {
		(*e)[n-1] += string(b)
		return
	}
	*e = append(*e, "H"+string(b))
}

// referenceEvents parses the whole stream at once, frame by frame, by RFC 6455 5.2.
func referenceEvents(stream []byte, maxText int) frameEvents {
	var ev frameEvents
	fragmented := false
	for len(stream) > 0 {
		if len(stream) < 2 {
			ev.handed(stream) // the stream ends inside a frame: the library gets what came
			break
		}
		b0, b1 := stream[0], stream[1]
		hl, l := 2, uint64(b1&0x7f)
		if l == 126 {
			hl = 4
		} else if l == 127 {
			hl = 10
		}
		if b1&0x80 != 0 {
			hl += 4
		}
		if len(stream) < hl {
			ev.handed(stream)
			break
		}
		if l == 126 {
			l = uint64(binary.BigEndian.Uint16(stream[2:]))
		} else if l == 127 {
			l = min(binary.BigEndian.Uint64(stream[2:]), math.MaxInt-maxHeader)
		}
		served := b0 == 0x81 && b1&0x80 != 0 && !fragmented && l <= uint64(maxText)
		size := hl + int(l)
		if !served {
			if op := b0 & 0x0f; op <= 2 {
				fragmented = b0&0x80 == 0
			}
			ev.handed(stream[:min(size, len(stream))])
			stream = stream[min(size, len(stream)):]
			continue
		}
		if len(stream) < size {
			ev.handed(stream)
			break
		}
		msg := bytes.Clone(stream[hl:size])
		unmask(msg, [4]byte(stream[hl-4:hl]))
		ev = append(ev, "S"+string(msg))
		stream = stream[size:]
	}
	return ev
}

// The frameReader must split any byte stream, however it is cut into reads and however
// small the library's buffer, exactly as a parse of the whole stream does.
func FuzzFrameReader(f *testing.F) {
	f.Add(bytes.Join([][]byte{textFrame("one"), maskedFrame(0x89, []byte("ping"), false), textFrame("two")}, nil), []byte{0, 3, 200}, uint8(7))
	f.Add(bytes.Join([][]byte{maskedFrame(0x01, []byte("frag"), false), textFrame("inside"), maskedFrame(0x80, []byte("end"), false), textFrame(strings.Repeat("z", 300))}, nil), []byte{1}, uint8(0))
	f.Add(append(textFrame(strings.Repeat("m", 3000)), textFrame("after")...), []byte{255, 17}, uint8(100))
	f.Add([]byte{0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4, 'x'}, []byte{}, uint8(3))
	f.Fuzz(func(t *testing.T, stream, cuts []byte, bufSize uint8) {
		const maxText = 1000
		var got frameEvents
		fr := &frameReader{conn: &chunkConn{data: bytes.Clone(stream), cuts: cuts}, maxText: maxText,
			onText: func(m []byte) { got = append(got, "S"+string(m)) }}
		p := make([]byte, 1+int(bufSize))
		for range 1 << 20 {
			n, err := fr.Read(p)
			got.handed(p[:n])
			if err != nil {
				break
			}
		}
		want := referenceEvents(stream, maxText)
		if len(got) != len(want) {
			t.Fatalf("%d events, want %d:\n got %q\nwant %q", len(got), len(want), got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("event %d:\n got %q\nwant %q", i, got[i], want[i])
			}
		}
	})
}

// scriptConn returns its reads one by one (then io.EOF), running hook before each.
type scriptConn struct {
	net.Conn
	reads [][]byte
	hook  func()
}

func (c *scriptConn) Read(p []byte) (int, error) {
	c.hook()
	if len(c.reads) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.reads[0])
	if c.reads[0] = c.reads[0][n:]; len(c.reads[0]) == 0 {
		c.reads = c.reads[1:]
	}
	return n, nil
}

// A header claiming a 60,000-byte frame must not make the reader set that much aside
// before the bytes arrive (a client could pin 64 KiB per connection with 14 bytes).
func TestFrameReader_BufferGrowsWithTheBytesThatArrive(t *testing.T) {
	frame := textFrame(strings.Repeat("g", 60_000))
	sc := &scriptConn{reads: [][]byte{frame[:100], frame[100:300], frame[300:]}}
	var served []string
	fr := &frameReader{conn: sc, maxText: 64 << 10, onText: func(m []byte) { served = append(served, string(m)) }}
	var caps []int
	sc.hook = func() { caps = append(caps, cap(fr.carry)) }
	p := make([]byte, 4096)
	if n, err := fr.Read(p); n != 0 || err != io.EOF {
		t.Fatalf("Read = %d, %v; want 0, EOF after serving the frame", n, err)
	}
	if len(served) != 1 || len(served[0]) != 60_000 {
		t.Fatalf("served %d messages, want the one of 60,000 bytes", len(served))
	}
	// Before the third read 300 bytes had come: the buffer may be a few times that.
	if len(caps) < 3 || caps[2] > 4096 {
		t.Errorf("carry capacity before each read: %v; want at most 4096 after 300 bytes", caps)
	}
}

// The stream ending inside a frame: the library gets the bytes that came, then the error
// (it reports an unexpected EOF, as it would without the frameReader).
func TestFrameReader_EOFInsideAFrameHandsOverWhatCame(t *testing.T) {
	frame := textFrame(strings.Repeat("e", 500))
	sc := &scriptConn{reads: [][]byte{frame[:200]}, hook: func() {}}
	fr := &frameReader{conn: sc, maxText: 1000, onText: func([]byte) { t.Error("served an incomplete frame") }}
	var handed []byte
	p := make([]byte, 64)
	for {
		n, err := fr.Read(p)
		handed = append(handed, p[:n]...)
		if err != nil {
			if err != io.EOF {
				t.Fatal(err)
			}
			break
		}
	}
	if !bytes.Equal(handed, frame[:200]) {
		t.Errorf("handed over %d bytes, want the 200 that came", len(handed))
	}
}

// A client that sends its first frames in the same write as its handshake: those bytes are
// in the library's buffer before the frameReader could see them, and the last of them may
// end inside a frame, so that connection keeps the library's path. Its requests are answered
// all the same, including the one split across the two writes.
func TestFrameReader_FramesSentWithTheHandshakeAreAnswered(t *testing.T) {
	mux := NewMux()
	mux.HandleInline("ws", "/echo", echoHandler)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}})
	nc, err := net.DialTimeout("tcp", addr, scaled(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	handshake := fmt.Sprintf("GET /10.0.0.9/31 HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", addr)
	// The second request is cut 8 bytes into its payload. Its mask key is chosen so that
	// what follows the cut reads as the header of a short masked text frame (0x81 0x84):
	// a frameReader starting there would serve garbage and starve the library.
	payload := []byte(`{"id":2,  "twoway":true,"data":{"cmd":"/echo","props":[2],"protocol":"ws"},"mode":0}`)
	key := [4]byte{' ' ^ 0x81, ' ' ^ 0x84, 0, 0} // payload[8] ^ key[0] = 0x81, payload[9] ^ key[1] = 0x84
	second := []byte{0x81, 0x80 | byte(len(payload)), key[0], key[1], key[2], key[3]}
	for i, c := range payload {
		second = append(second, c^key[i%4])
	}
	const cut = 6 + 8
	first := append(append([]byte(handshake), textFrame(echoReq(1, "[1]"))...), second[:cut]...)
	if _, err := nc.Write(first); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	for id := 1; id <= 2; id++ {
		_, reply, err := readAnyServerFrame(br)
		if err != nil {
			t.Fatalf("reply %d: %v", id, err)
		}
		if want := fmt.Sprintf(`{"id":%d,"mode":1,"twoway":false,"data":{"status":200,"data":[%d]}}`, id, id); string(reply) != want {
			t.Fatalf("reply %s, want %s", reply, want)
		}
		if id == 1 { // the server has read the first write: now the rest of the second frame
			if _, err := nc.Write(second[cut:]); err != nil {
				t.Fatal(err)
			}
		}
	}
}
