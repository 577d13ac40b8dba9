//go:build unix

package wsserver

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"testing"
	"time"
)

// BenchmarkServeBurst: the server side of where, the hottest request. A client on a raw
// loopback TCP WebSocket connection writes bursts of where-like requests, each burst in
// one write, and reads every reply before the next burst, so the server reads many
// requests per socket read and writes their replies together, as under load. The handler
// is inline and answers a constant: what is measured is the server's frame parsing,
// dispatch and reply path. ns/op and cpu-ns/op (user+system CPU of the process, client
// included) are per request.
//
//	go test -run '^$' -bench ServeBurst -count 5 ./wsserver/
func BenchmarkServeBurst(b *testing.B) {
	const burstLen = 64
	const want = `{"id":%d,"mode":1,"twoway":false,"data":{"status":200,"data":"10.0.0.7:9001"}}`
	addr := json.RawMessage(`"10.0.0.7:9001"`)
	mux := NewMux()
	mux.HandleInline("ws", "where", func(context.Context, *Channel, json.RawMessage) (json.RawMessage, error) {
		return addr, nil
	})
	_, hostport := startServer(b, ServerConfig{ChannelConfig: ChannelConfig{Mux: mux, PingInterval: -1}})
	nc, br := rawTCPHandshake(b, hostport, "/10.0.0.9/30")
	br = bufio.NewReaderSize(br, 64<<10)

	var burst []byte
	ends := make([]int, burstLen) // ends[i]: the length of the first i+1 requests
	for i := range burstLen {
		burst = append(burst, rawFrame(true, 0x1, fmt.Appendf(nil,
			`{"id":%d,"twoway":true,"data":{"cmd":"where","props":["user-service"],"protocol":"ws"},"mode":0}`, i))...)
		ends[i] = len(burst)
	}
	var hdr [2]byte
	payload := make([]byte, 125)
	// readReply reads one reply (an unmasked text frame under 126 bytes) into payload.
	readReply := func() []byte {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			b.Fatalf("read reply: %v", err)
		}
		n := int(hdr[1] & 0x7f)
		if hdr[0] != 0x81 || n >= 126 {
			b.Fatalf("unexpected frame header %x", hdr)
		}
		if _, err := io.ReadFull(br, payload[:n]); err != nil {
			b.Fatalf("read reply: %v", err)
		}
		return payload[:n]
	}
	// One checked burst first: the replies are the ones where owes, in order.
	if _, err := nc.Write(burst); err != nil {
		b.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(scaled(10 * time.Second)))
	for i := range burstLen {
		if got, w := string(readReply()), fmt.Sprintf(want, i); got != w {
			b.Fatalf("reply %d = %s, want %s", i, got, w)
		}
	}

	b.ReportAllocs()
	cpu := cpuTime()
	b.ResetTimer()
	for done := 0; done < b.N; {
		k := min(burstLen, b.N-done)
		nc.SetDeadline(time.Now().Add(scaled(10 * time.Second)))
		if _, err := nc.Write(burst[:ends[k-1]]); err != nil {
			b.Fatal(err)
		}
		for range k {
			readReply()
		}
		done += k
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
}
