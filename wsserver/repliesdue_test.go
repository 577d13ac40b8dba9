package wsserver

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// repliesDue lets a reader that drained the socket wait without reading once more
// (Channel.mayWait). It must equal the number of asynchronous handlers' two-way requests
// in inflight on every path: one too many and a reader waits with no write to come, so a
// reset goes unnoticed; one too few and it reads in vain. A goroutine handler's request is
// not counted: it may wait on its ctx for as long as the channel lives.
func TestRepliesDue_CountsTheAsynchronousTwoWayRequestsInFlightOnEveryPath(t *testing.T) {
	var mu sync.Mutex
	held := map[string]*Reply{}
	mux := NewMux()
	mux.HandleAsync("ws", "/hold", func(_ context.Context, _ *Channel, props json.RawMessage, r *Reply) {
		mu.Lock()
		held[string(props)] = r
		mu.Unlock()
	})
	mux.HandleAsync("ws", "/panic-async", func(context.Context, *Channel, json.RawMessage, *Reply) { panic("async") })
	mux.Handle("ws", "/panic", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) { panic("sync") })
	release := make(chan struct{})
	mux.Handle("ws", "/wait", func(ctx context.Context, _ *Channel, _ json.RawMessage) (json.RawMessage, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return json.RawMessage(`"done"`), nil
	})
	opened := make(chan *Channel, 1)
	_, addr := startServer(t, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1},
		OnOpen: func(ch *Channel) { opened <- ch }})
	t.Cleanup(func() { // answers what a failed step left held, so the close need not wait for it
		mu.Lock()
		defer mu.Unlock()
		for _, r := range held {
			r.Send(nil, nil)
		}
	})
	nc, br := rawTCPHandshake(t, addr, "/10.0.0.9/38")
	ch := recv(t, opened, 5*time.Second, "OnOpen")

	send := func(frames ...string) {
		t.Helper()
		var b []byte
		for _, f := range frames {
			b = append(b, textFrame(f)...)
		}
		if _, err := nc.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	request := func(id int, twoway bool, cmd, props string) string {
		return fmt.Sprintf(`{"id":%d,"twoway":%t,"data":{"cmd":%q,"props":%s,"protocol":"ws"},"mode":0}`, id, twoway, cmd, props)
	}
	counts := func() (due, marked, all int) {
		ch.serving.mu.Lock()
		defer ch.serving.mu.Unlock()
		for _, in := range ch.serving.inflight {
			if in.replyDue {
				marked++
			}
		}
		return int(ch.serving.repliesDue.Load()), marked, len(ch.serving.inflight)
	}
	// check waits until the map holds as many requests as the step leaves in it, then
	// asserts the count: admit and forget change both under one lock, so a count that
	// went wrong stays wrong.
	check := func(step string, wantDue, wantAll int) {
		t.Helper()
		eventually(t, 5*time.Second, step, func() bool { _, _, all := counts(); return all == wantAll })
		if due, marked, _ := counts(); due != wantDue || marked != wantDue {
			t.Fatalf("%s: repliesDue %d, %d requests marked as owing a reply, want %d", step, due, marked, wantDue)
		}
	}
	heldReply := func(key string) *Reply {
		t.Helper()
		var r *Reply
		eventually(t, 5*time.Second, "request "+key+" to reach its handler", func() bool {
			mu.Lock()
			defer mu.Unlock()
			r = held[key]
			return r != nil
		})
		return r
	}
	expectReply := func(id int, want string) {
		t.Helper()
		nc.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
		_, payload, err := readAnyServerFrame(br)
		if err != nil {
			t.Fatalf("reading the reply to id %d: %v", id, err)
		}
		if !strings.Contains(string(payload), fmt.Sprintf(`"id":%d,`, id)) ||
			!strings.Contains(string(payload), want) {
			t.Fatalf("reply %s, want the answer to id %d with %s", payload, id, want)
		}
	}

	send(request(1, true, "/hold", `["a"]`))
	a := heldReply(`["a"]`)
	check("a two-way request", 1, 1)
	send(request(2, false, "/hold", `["b"]`))
	b := heldReply(`["b"]`)
	check("a one-way request beside it", 1, 2)
	send(request(1, true, "/hold", `["c"]`)) // id 1 again while a is in flight
	// The map's size stays 2: waiting for c's handler is what syncs this step.
	c := heldReply(`["c"]`)
	check("a two-way request that reuses an id in flight", 1, 2)
	send(`{"id":9,"twoway":false,"data":1,"mode":2}`)
	check("an abort of it", 0, 1)
	// The request whose id was reused is still answered, but no longer counted: not
	// counting it only costs a read the reader could have skipped.
	a.Send(json.RawMessage(`"a"`), nil)
	expectReply(1, `"a"`)
	c.Send(json.RawMessage(`"c"`), nil) // aborted: no reply
	b.Send(json.RawMessage(`"b"`), nil) // one-way: no reply
	check("the answers to what was replaced, aborted or one-way", 0, 0)

	send(request(3, true, "/panic-async", `[]`))
	expectReply(3, `"status":500`)
	check("an asynchronous handler that panicked", 0, 0)
	send(request(4, true, "/panic", `[]`))
	expectReply(4, `"status":500`)
	check("a handler that panicked on its goroutine", 0, 0)
	send(request(5, true, "/wait", `[]`))
	check("a handler on its goroutine, which may wait for as long as the channel lives", 0, 1)
	close(release)
	expectReply(5, `"done"`)
	check("its answer", 0, 0)

	full := make([]string, DefaultMaxInflight)
	for i := range full {
		full[i] = request(100+i, false, "/hold", fmt.Sprintf(`[%d]`, i))
	}
	send(full...)
	check("a connection at its in-flight limit", 0, DefaultMaxInflight)
	send(request(6, true, "/hold", `["refused"]`))
	expectReply(6, `"status":429`) // the map's size stays at the limit: this syncs the step
	check("a request refused with 429", 0, DefaultMaxInflight)
	for i := range full {
		heldReply(fmt.Sprintf(`[%d]`, i)).Send(nil, nil)
	}
	check("every held request answered", 0, 0)
}
