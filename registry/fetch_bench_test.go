package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/wsserver"
)

// BenchmarkFetch compares one call to an echo agent made directly (a channel of the
// caller's own, as an agent calls a peer whose address `where` gave it) with the same call
// proxied by a node: through the Go API (Node.Fetch, which reuses the agent's own
// connection to the node) and through the HTTP gateway (POST /v1/fetch). Everything runs
// in this process on loopback; ns/op is per call, p50/p99 are per-call latencies.
//
//	go test -run '^$' -bench Fetch -benchtime 3s ./registry/
func BenchmarkFetch(b *testing.B) {
	n := startNode(b, b.TempDir())
	agent, err := wsserver.NewAgent(wsserver.AgentConfig{
		Registry: n.WSAddr(), Listen: "127.0.0.1:0", Advertise: "127.0.0.1", Logger: testLogger(b),
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { agent.Close() })
	agent.Handle("ws", "/echo", func(_ context.Context, _ *wsserver.Channel, props json.RawMessage) (json.RawMessage, error) {
		return props, nil
	})
	ctx := context.Background()
	if err := agent.Online(ctx, "bench-echo"); err != nil {
		b.Fatal(err)
	}
	props := json.RawMessage(`[1,"a"]`)
	check := func(r []byte, err error) error {
		if err == nil && !bytes.Equal(bytes.TrimSpace(r), props) {
			err = fmt.Errorf("echo returned %s", r)
		}
		return err
	}

	direct, err := wsserver.Dial(ctx, agent.Addr(), "127.0.0.1:1", wsserver.DialConfig{ChannelConfig: wsserver.ChannelConfig{Logger: testLogger(b)}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { direct.Close(1000, "") })
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	b.Cleanup(hc.CloseIdleConnections)
	url := "http://" + n.HTTPAddr() + "/v1/fetch/bench-echo/echo"

	variants := []struct {
		name string
		call func() error
	}{
		{"direct", func() error { return check(direct.Call(ctx, "ws", "/echo", props, 5*time.Second)) }},
		{"proxied-go-api", func() error { return check(n.Fetch(ctx, "ws", "bench-echo/echo", props, 5*time.Second)) }},
		{"proxied-http", func() error {
			resp, err := hc.Post(url, "application/json", bytes.NewReader(props))
			if err != nil {
				return err
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
			}
			return check(body, err)
		}},
	}
	for _, v := range variants {
		for _, callers := range []int{1, 64} {
			b.Run(fmt.Sprintf("%s/c=%d", v.name, callers), func(b *testing.B) {
				for range 10 { // dial and warm up
					if err := v.call(); err != nil {
						b.Fatal(err)
					}
				}
				benchCalls(b, callers, v.call)
			})
		}
	}
}

// benchCalls makes b.N calls from the given number of concurrent callers and reports the
// latency percentiles.
func benchCalls(b *testing.B, callers int, call func() error) {
	lat := make([][]time.Duration, callers)
	errs := make(chan error, callers)
	var next sync.WaitGroup
	work := make(chan struct{}, b.N)
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	b.ResetTimer()
	for i := range callers {
		next.Add(1)
		go func() {
			defer next.Done()
			for range work {
				t := time.Now()
				if err := call(); err != nil {
					errs <- err
					return
				}
				lat[i] = append(lat[i], time.Since(t))
			}
		}()
	}
	next.Wait()
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	}
}
