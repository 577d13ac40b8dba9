package cluster

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
	"github.com/wsregistry/wsregistry/internal/testcerts"
	"github.com/wsregistry/wsregistry/internal/testutil"
)

// A follower's writes reach the leader over the forward stream, many in flight on one
// connection, each answered with its own index and results.
func TestForwardStream_CarriesAFollowersWrites(t *testing.T) {
	nodes := startCluster(t, 3)
	f := followerOf(t, nodes)
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			commit(t, f, meta(fmt.Sprintf("streamed-%d", i)))
		}()
	}
	// A batch with a bad command: the others commit, the bad one's result says why.
	errs, err := f.Commit(context.Background(), meta("streamed-ok"), fsm.Register{RequestID: "bad"})
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if errs[0] != nil || errs[1] == nil {
		t.Fatalf("results %v, want nil and an error for the invalid register", errs)
	}
	if _, ok := f.state.Node("streamed-39"); !ok {
		t.Fatal("a forwarded write is not applied on the follower on return")
	}
	if f.client.streams.viaStream.Load() == 0 || f.client.streams.viaHTTP.Load() != 0 {
		t.Fatalf("forwards: %d over the stream, %d over HTTP; want all over the stream",
			f.client.streams.viaStream.Load(), f.client.streams.viaHTTP.Load())
	}
}

// A leader that refuses the stream (a build from before it) is asked over HTTP, and the
// follower's writes commit as before.
func TestForwardStream_ALeaderWithoutItIsAskedOverHTTP(t *testing.T) {
	nodes := startCluster(t, 3, func(c *Config) { c.Peer.noForwardStream = true })
	f := followerOf(t, nodes)
	for i := range 5 {
		commit(t, f, meta(fmt.Sprintf("over-http-%d", i)))
	}
	if f.client.streams.viaHTTP.Load() == 0 || f.client.streams.viaStream.Load() != 0 {
		t.Fatalf("forwards: %d over the stream, %d over HTTP; want all over HTTP",
			f.client.streams.viaStream.Load(), f.client.streams.viaHTTP.Load())
	}
}

// A stream that breaks (the leader's side closed, as when it stops) fails the calls in
// flight with a forward error, which Commit retries; the next call dials again.
func TestForwardStream_ABrokenStreamIsRedialed(t *testing.T) {
	nodes := startCluster(t, 3)
	l, f := leaderOf(t, nodes), followerOf(t, nodes)
	commit(t, f, meta("before-break"))
	l.fwdServer.mu.Lock()
	for c := range l.fwdServer.conns {
		c.Close()
	}
	l.fwdServer.mu.Unlock()
	testutil.Eventually(t, 5*time.Second, func() bool {
		f.client.streams.mu.Lock()
		defer f.client.streams.mu.Unlock()
		return len(f.client.streams.streams) == 0
	}, "the follower kept a stream whose connection the leader closed")
	commit(t, f, meta("after-break"))
	if _, ok := f.state.Node("after-break"); !ok {
		t.Fatal("the write after the break is not applied on the follower")
	}
}

// Garbage on a forward stream costs that connection only: the leader closes it, and
// other followers' writes go on.
func TestForwardStream_ABadFrameClosesOnlyThatStream(t *testing.T) {
	nodes := startCluster(t, 3)
	l, f := leaderOf(t, nodes), followerOf(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := f.layer.dial(ctx, l.Advertise(), kindForward)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var head [fwdHeaderLen]byte
	binary.BigEndian.PutUint32(head[:], maxForwardFrame+1)
	if _, err := conn.Write(head[:]); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("the leader kept a stream that sent an oversized frame (read: %v)", err)
	}
	commit(t, f, meta("after-bad-frame"))

	// A frame whose body is not a batch is answered with an error, and the stream stays.
	conn2, err := f.layer.dial(ctx, l.Advertise(), kindForward)
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	s := &fwdStream{conn: conn2, pending: map[uint64]chan fwdAnswer{}}
	go s.readLoop()
	reply, err := s.call(ctx, []byte("not a batch"))
	if err != nil || reply.Error == "" {
		t.Fatalf("a body that is not a batch: reply %+v, err %v; want an error in the reply", reply, err)
	}
	body, err := encodeBatch([]fsm.Command{meta("raw-stream")}, true)
	if err != nil {
		t.Fatal(err)
	}
	reply, err = s.call(ctx, body)
	if err != nil || reply.Error != "" || reply.Index == 0 {
		t.Fatalf("a good batch after a bad one: reply %+v, err %v", reply, err)
	}
}

// On a mutual-TLS peer port the stream runs inside TLS like raft and the internal calls.
func TestForwardStream_OverMutualTLS(t *testing.T) {
	files, err := testcerts.Write(t.TempDir(), net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	nodes := startCluster(t, 3, func(c *Config) {
		c.Peer = PeerAuth{
			ServerTLS: &tls.Config{Certificates: []tls.Certificate{files.Pair}, ClientCAs: files.Pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12},
			ClientTLS: &tls.Config{Certificates: []tls.Certificate{files.Pair}, RootCAs: files.Pool, MinVersion: tls.VersionTLS12},
		}
	})
	f := followerOf(t, nodes)
	commit(t, f, meta("over-tls"))
	if f.client.streams.viaStream.Load() == 0 || f.client.streams.viaHTTP.Load() != 0 {
		t.Fatalf("forwards: %d over the stream, %d over HTTP; want all over the stream",
			f.client.streams.viaStream.Load(), f.client.streams.viaHTTP.Load())
	}
}

// Closing a follower's client does not wait for a dial in progress to a leader that does
// not answer (a vanished host holds a dial until its timeout).
func TestForwardStream_CloseDoesNotWaitForADial(t *testing.T) {
	own := listen(t)
	layer, err := newStreamLayer(own, own.Addr().String(), &PeerAuth{Keys: []string{"test-key"}})
	if err != nil {
		t.Fatal(err)
	}
	defer layer.Close()
	silent := listen(t) // completes TCP handshakes, never the peer handshake
	defer silent.Close()
	c := newFwdClient(layer)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Scaled(2*time.Second))
		defer cancel()
		_, _, err := c.call(ctx, silent.Addr().String(), []byte("x"))
		done <- err
	}()
	conn, err := silent.Accept() // the dial is under way
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	c.close()
	if took := time.Since(start); took > time.Second {
		t.Fatalf("close waited %v for a dial in progress", took)
	}
	if err := <-done; err == nil {
		t.Fatal("a call to a leader that never answered succeeded")
	}
}

// fakeLeader serves one forward stream on a local port: it answers every call with index
// 1, except those whose body is "hang", and stays silent entirely once silent is set.
type fakeLeader struct {
	ln     net.Listener
	silent chan struct{}
}

func newFakeLeader(t *testing.T) *fakeLeader {
	f := &fakeLeader{ln: listen(t), silent: make(chan struct{})}
	t.Cleanup(func() { f.ln.Close() })
	go func() {
		conn, err := f.ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		for {
			id, body, err := readFwdFrame(r)
			if err != nil {
				return
			}
			select {
			case <-f.silent:
				continue
			default:
			}
			if string(body) == "hang" {
				continue
			}
			w := &fwdWriter{conn: conn}
			w.answer(id, proposeReply{Index: 1})
			if _, err := conn.Write(w.buf); err != nil {
				return
			}
		}
	}()
	return f
}

func (f *fakeLeader) stream(t *testing.T, timeout time.Duration) *fwdStream {
	conn, err := net.Dial("tcp", f.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := &fwdStream{conn: conn, pending: map[uint64]chan fwdAnswer{}, answerTimeout: timeout}
	s.lastRead.Store(int64(time.Since(monoStart)))
	t.Cleanup(func() { s.fail(ErrClosed) })
	go s.readLoop()
	return s
}

// One unanswered call gives up alone while the leader answers others on the same stream;
// a leader that answers nothing at all breaks the stream, and every call on it ends.
func TestForwardStream_AnUnansweredCallFailsAloneUnlessTheLeaderIsSilent(t *testing.T) {
	leader := newFakeLeader(t)
	timeout := testutil.Scaled(time.Second)
	s := leader.stream(t, timeout)
	ctx := context.Background()

	hung := make(chan error, 1)
	go func() { _, err := s.call(ctx, []byte("hang")); hung <- err }()
	deadline := time.After(testutil.Scaled(10 * time.Second))
	for answered := false; !answered; {
		select {
		case err := <-hung:
			if err == nil || errors.Is(err, errFwdBroken) {
				t.Fatalf("the unanswered call ended with %v, want its own timeout", err)
			}
			answered = true
		case <-deadline:
			t.Fatal("the unanswered call never gave up")
		default:
			if r, err := s.call(ctx, []byte("ok")); err != nil || r.Index != 1 {
				t.Fatalf("a call beside the unanswered one: %+v, %v", r, err)
			}
			time.Sleep(timeout / 10) // the leader keeps answering while the other call waits
		}
	}
	if r, err := s.call(ctx, []byte("ok")); err != nil || r.Index != 1 {
		t.Fatalf("the stream after one call gave up: %+v, %v", r, err)
	}

	close(leader.silent)
	if _, err := s.call(ctx, []byte("ok")); !errors.Is(err, errFwdBroken) {
		t.Fatalf("a call to a silent leader: %v, want the stream broken", err)
	}
}

// A batch too long for a frame is refused before it is sent: the stream and the calls in
// flight on it are unaffected.
func TestForwardStream_AnOversizedBatchFailsOnlyItself(t *testing.T) {
	leader := newFakeLeader(t)
	s := leader.stream(t, 0)
	ctx := context.Background()
	if _, err := s.call(ctx, make([]byte, maxForwardFrame)); !errors.Is(err, errBatchTooLarge) {
		t.Fatalf("an oversized batch: %v, want a refusal of that call alone", err)
	}
	if r, err := s.call(ctx, []byte("ok")); err != nil || r.Index != 1 {
		t.Fatalf("the stream after an oversized batch: %+v, %v", r, err)
	}
}

// After a leader change a follower's stream to the former leader is closed once its
// calls are answered, instead of staying open until the follower stops.
func TestForwardStream_TheStreamToAFormerLeaderCloses(t *testing.T) {
	nodes := startCluster(t, 3)
	old := leaderOf(t, nodes)
	var followers []*testNode
	for _, n := range nodes {
		if n != old {
			followers = append(followers, n)
			commit(t, n, meta("before-change-"+n.ID()))
		}
	}
	if err := old.TransferLeadership(); err != nil {
		t.Fatal(err)
	}
	var f, now *testNode
	testutil.Eventually(t, 10*time.Second, func() bool {
		for _, n := range followers {
			if n.IsLeader() {
				now = n
			} else {
				f = n
			}
		}
		return now != nil && f != nil
	}, "no new leader among the former followers")
	commit(t, f, meta("after-change"))
	var open []string
	testutil.Eventually(t, 5*time.Second, func() bool {
		f.client.streams.mu.Lock()
		defer f.client.streams.mu.Unlock()
		open = open[:0]
		for addr := range f.client.streams.streams {
			open = append(open, addr)
		}
		return len(open) == 1 && open[0] == now.Advertise()
	}, "the follower keeps streams to %v, want only the new leader's (%s)", &open, now.Advertise())
}
