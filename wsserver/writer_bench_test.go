//go:build unix

package wsserver

import (
	"context"
	"encoding/json"
	"syscall"
	"testing"
	"time"
)

// BenchmarkRoundTrip: calls from a dialed channel to a Server over loopback, both ends in
// this process. echo is served by a handler goroutine, its reply queued for the writer;
// where by an inline handler, its reply held and flushed by the reader (the registry's
// where). serial: one call at a time, so every frame finds the writer idle; parallel: 16
// callers per P, so the writers stay busy and write batches. cpu-ns/op is the process's
// user+system CPU per call (both ends), the figure to compare on a shared machine.
//
//	go test -run '^$' -bench RoundTrip -benchmem ./wsserver/
func BenchmarkRoundTrip(b *testing.B) {
	mux := NewMux()
	mux.Handle("ws", "/echo", echoHandler)
	mux.HandleInline("ws", "/where", echoHandler)
	_, addr := startServer(b, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux}})
	ch := dialTest(b, addr, DialConfig{})
	props := json.RawMessage(`["ns-1"]`)
	call := func(b *testing.B, cmd string) {
		if _, err := ch.Call(context.Background(), "ws", cmd, props, 10*time.Second); err != nil {
			b.Fatal(err)
		}
	}
	for _, cmd := range []string{"/echo", "/where"} {
		b.Run(cmd[1:]+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			cpu := cpuTime()
			b.ResetTimer()
			for range b.N {
				call(b, cmd)
			}
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
		b.Run(cmd[1:]+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(16)
			cpu := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					call(b, cmd)
				}
			})
			b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
		})
	}
}

// cpuTime is the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
