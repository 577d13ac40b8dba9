package wsserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The accepting end writes its frames itself (corkConn.writeTextFrames): replies whose
// payload crosses the 7-bit, 16-bit and 64-bit length forms must reach a strict client
// (coder/websocket's) whole and in order.
func TestReplies_FramesAcrossEveryLengthForm(t *testing.T) {
	mux := NewMux()
	mux.Handle("ws", "/size", func(_ context.Context, _ *Channel, props json.RawMessage) (json.RawMessage, error) {
		var n []int
		if err := json.Unmarshal(props, &n); err != nil || len(n) != 1 {
			return nil, NewError(400, "want [n]")
		}
		return json.RawMessage(`"` + strings.Repeat("x", n[0]) + `"`), nil
	})
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}})
	c := rawDial(t, "ws://"+addr+"/10.0.0.9/4000")
	var sizes []int
	for n := 60; n <= 200; n++ { // the reply payload crosses 125/126
		sizes = append(sizes, n)
	}
	for n := 65440; n <= 65600; n++ { // and 65535/65536
		sizes = append(sizes, n)
	}
	// Several requests per write, so replies also leave several to a write.
	var batch []string
	for i, n := range sizes {
		batch = append(batch, `{"id":`+strconv.Itoa(i)+`,"twoway":true,"data":{"cmd":"/size","props":[`+strconv.Itoa(n)+`],"protocol":"ws"},"mode":0}`)
	}
	go func() {
		for _, req := range batch {
			ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
			_ = c.Write(ctx, 1, []byte(req))
			cancel()
		}
	}()
	// Handlers run concurrently: replies may come in any order.
	for range sizes {
		var reply stringReply
		raw := rawRead(t, c)
		if err := json.Unmarshal([]byte(raw), &reply); err != nil {
			t.Fatalf("reply %.80q...: %v", raw, err)
		}
		if reply.ID < 0 || reply.ID >= len(sizes) || reply.Data.Status != 200 || len(reply.Data.Data) != sizes[reply.ID] {
			t.Fatalf("reply %d: status %d, %d bytes of data, want 200 and %d", reply.ID, reply.Data.Status, len(reply.Data.Data), sizes[reply.ID])
		}
	}
}

// After the library wrote a close frame, no data frame may follow it.
func TestCorkConn_NoDataFrameAfterTheCloseFrame(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	got := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(b)
		got <- all
	}()
	cc := &corkConn{Conn: a, server: true}
	if err := cc.writeTextFrames([][]byte{[]byte("hi")}, time.Second); err != nil {
		t.Fatal(err)
	}
	closeFrame := []byte{0x88, 0x02, 0x03, 0xe8} // 1000
	if _, err := cc.Write(closeFrame); err != nil {
		t.Fatal(err)
	}
	if err := cc.writeTextFrames([][]byte{[]byte("late")}, time.Second); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("data frame after the close frame: err %v, want net.ErrClosed", err)
	}
	a.Close()
	if wire, want := <-got, "\x81\x02hi"+string(closeFrame); string(wire) != want {
		t.Fatalf("wire %q, want %q", wire, want)
	}
}

// A flush leaves its write deadline armed for the next ones; a library write (a pong
// after the connection sat idle) must not inherit it once it has passed.
func TestCorkConn_AnExpiredFlushDeadlineDoesNotFailLibraryWrites(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	go func() { _, _ = io.Copy(io.Discard, b) }()
	cc := &corkConn{Conn: a, server: true}
	const timeout = 50 * time.Millisecond
	if err := cc.writeTextFrames([][]byte{[]byte("one")}, timeout); err != nil {
		t.Fatal(err)
	}
	armed := cc.deadline
	if err := cc.writeTextFrames([][]byte{[]byte("two")}, timeout); err != nil {
		t.Fatal(err)
	}
	if !cc.deadline.Equal(armed) {
		t.Errorf("the second flush rearmed the deadline (%v -> %v): want it reused", armed, cc.deadline)
	}
	for time.Now().Before(armed.Add(10 * time.Millisecond)) {
		time.Sleep(5 * time.Millisecond) // let the armed deadline pass
	}
	pong := []byte{0x8a, 0x00}
	if _, err := cc.Write(pong); err != nil {
		t.Fatalf("library write after the flush deadline passed: %v", err)
	}
	if err := cc.writeTextFrames([][]byte{[]byte("three")}, timeout); err != nil {
		t.Fatalf("flush after the deadline passed: %v", err)
	}
}
