package wsserver

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// channelGoroutines counts the goroutines running code of a Channel, and among them the
// writers.
func channelGoroutines() (all, writers int) {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "wsserver.(*Channel).") {
			all++
		}
		if strings.Contains(g, "wsserver.(*Channel).writeLoop") {
			writers++
		}
	}
	return all, writers
}

// An idle connection holds only its reader: the writer runs while there is something to
// write, and is gone once it was written.
func TestWriter_IdleChannelHasNoWriterGoroutine(t *testing.T) {
	const n = 20
	noPing := ChannelConfig{PingInterval: -1}
	srvCfg := noPing
	srvCfg.Mux = NewMux()
	srvCfg.Mux.Handle("ws", "/echo", echoHandler)
	accepted := make(chan *Channel, n)
	_, addr := startServer(t, ServerConfig{ChannelConfig: srvCfg, OnOpen: func(ch *Channel) { accepted <- ch }})
	eventually(t, 5*time.Second, "no channel goroutines before", func() bool {
		all, _ := channelGoroutines()
		return all == 0
	})
	before := runtime.NumGoroutine()
	for i := range n {
		// Distinct keys: a second connection with the same key would replace the first.
		ch, err := Dial(context.Background(), addr, fmt.Sprintf("127.0.0.1:%d", 9000+i), DialConfig{ChannelConfig: noPing})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ch.Close(1000, ""); <-ch.Done() })
		// A call makes both ends write: the request through a writer goroutine, the reply
		// from the handler's goroutine itself (inline); a queued one-way request starts
		// a writer goroutine on either end.
		if res, err := ch.Call(context.Background(), "ws", "/echo", []int{i}, scaled(5*time.Second)); err != nil || string(res) != fmt.Sprintf("[%d]", i) {
			t.Fatalf("call %d: %s, %v", i, res, err)
		}
		oneWay := []byte(`{"id":1000,"twoway":false,"data":{"cmd":"/echo","props":[],"protocol":"ws"},"mode":0}`)
		if err := ch.enqueue(oneWay, false); err != nil {
			t.Fatal(err)
		}
		if err := recv(t, accepted, 5*time.Second, "OnOpen").enqueue(oneWay, false); err != nil {
			t.Fatal(err)
		}
	}
	// Each connection has two channels here (the dialed one and the accepted one), each
	// with one reader; with a writer each it would be 4n.
	var all, writers, grown int
	ok := waitUntil(scaled(5*time.Second), func() bool {
		all, writers = channelGoroutines()
		grown = runtime.NumGoroutine() - before
		return writers == 0 && all == 2*n && grown <= 2*n
	})
	if !ok {
		t.Fatalf("%d idle connections: %d channel goroutines (%d writers), %d goroutines more than before; want %d, 0, at most %d",
			n, all, writers, grown, 2*n, 2*n)
	}
}

// waitUntil polls cond until it holds or d has passed (unlike eventually, the caller
// reports what it saw).
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Frames queued by several goroutines arrive complete and, per goroutine, in order, while
// the writer starts and stops again and again (it is idle between rounds, and may stop
// within one whenever the senders fall behind it), as a goroutine or inline in a sender
// that hands what is left to a goroutine. Both ends: the accepting end writes its own
// frames, a dialing end writes through the library.
func TestWriter_BurstsFromSeveralSendersArriveInOrderAcrossRestarts(t *testing.T) {
	const senders, rounds, perRound = 4, 25, 40
	for _, from := range []string{"accepted", "dialed"} {
		t.Run(from, func(t *testing.T) {
			var mu sync.Mutex
			next := make([]int, senders) // the next number expected from each sender
			var got, bad int
			record := func(_ context.Context, _ *Channel, props json.RawMessage) (json.RawMessage, error) {
				var p [2]int
				if err := json.Unmarshal(props, &p); err != nil || p[0] < 0 || p[0] >= senders {
					t.Errorf("bad props %s", props)
					return nil, nil
				}
				mu.Lock()
				defer mu.Unlock()
				got++
				if p[1] != next[p[0]] {
					bad++
					if bad <= 5 {
						t.Errorf("sender %d: got frame %d, want %d", p[0], p[1], next[p[0]])
					}
				}
				next[p[0]] = p[1] + 1
				return nil, nil
			}
			mux := NewMux()
			mux.HandleInline("ws", "/rec", record)
			opened := make(chan *Channel, 1)
			_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}, OnOpen: func(ch *Channel) { opened <- ch }})
			dialed := dialTest(t, addr, DialConfig{ChannelConfig: ChannelConfig{Mux: mux}})
			accepted := recv(t, opened, 5*time.Second, "OnOpen")
			sender := accepted
			if from == "dialed" {
				sender = dialed
			}
			for r := range rounds {
				var wg sync.WaitGroup
				for s := range senders {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := r * perRound; i < (r+1)*perRound; i++ {
							f := fmt.Sprintf(`{"id":%d,"twoway":false,"data":{"cmd":"/rec","props":[%d,%d],"protocol":"ws"},"mode":0}`, s*rounds*perRound+i, s, i)
							// Half the senders write inline when they find no writer, as handler
							// goroutines and calls do; the others start a writer goroutine.
							if err := sender.enqueue([]byte(f), s%2 == 0); err != nil {
								t.Errorf("sender %d, frame %d: %v", s, i, err)
								return
							}
							if i%7 == s { // let the writer catch up now and then
								runtime.Gosched()
							}
						}
					}()
				}
				wg.Wait()
				// Everything is written and the writer has gone: the next round starts
				// a new one.
				eventually(t, 5*time.Second, "the writer to finish", func() bool { return sender.writer.pending.Load() == 0 })
			}
			eventually(t, 10*time.Second, "every frame", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return got == senders*rounds*perRound
			})
			mu.Lock()
			defer mu.Unlock()
			for s, n := range next {
				if n != rounds*perRound {
					t.Errorf("sender %d: last frame %d, want %d", s, n-1, rounds*perRound-1)
				}
			}
			if _, writers := channelGoroutines(); writers != 0 {
				// Not fatal by itself (the other end may be writing a pong), but the
				// sender's pending is zero, so its writer has returned or is returning.
				t.Logf("%d writer goroutines still around", writers)
			}
		})
	}
}

// A close started while no writer runs still flushes what was queued first, then closes
// with the code given.
func TestWriter_CloseWithoutWriterFlushesThenCloses(t *testing.T) {
	mux := NewMux()
	var mu sync.Mutex
	var seen []int
	mux.HandleInline("ws", "/rec", func(_ context.Context, _ *Channel, props json.RawMessage) (json.RawMessage, error) {
		var p [1]int
		_ = json.Unmarshal(props, &p)
		mu.Lock()
		seen = append(seen, p[0])
		mu.Unlock()
		return nil, nil
	})
	opened := make(chan *Channel, 1)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}, OnOpen: func(ch *Channel) { opened <- ch }})
	dialed := dialTest(t, addr, DialConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	accepted := recv(t, opened, 5*time.Second, "OnOpen")
	eventually(t, 5*time.Second, "no writer", func() bool { return accepted.writer.pending.Load() == 0 })
	const n = 10
	for i := range n {
		if err := accepted.enqueue([]byte(fmt.Sprintf(`{"id":%d,"twoway":false,"data":{"cmd":"/rec","props":[%d],"protocol":"ws"},"mode":0}`, i, i)), false); err != nil {
			t.Fatal(err)
		}
	}
	accepted.Close(4000, "bye")
	recv(t, dialed.Done(), 5*time.Second, "the dialed channel to end")
	if err := dialed.Err(); err == nil || !strings.Contains(err.Error(), `4000 "bye"`) {
		t.Fatalf("dialed channel ended with %v, want the peer's 4000 \"bye\"", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n {
		t.Fatalf("got %d frames before the close, want %d: %v", len(seen), n, seen)
	}
	for i, v := range seen {
		if v != i {
			t.Fatalf("frames out of order: %v", seen)
		}
	}
}
