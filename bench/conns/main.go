// Command conns holds many idle agent connections to one registry node, for
// scripts/bench-conns.sh, which measures the node's memory per connection at
// sizes this host's fd limit does not allow outside a container (50,000).
//
//	conns -target node:8427 -steps 10000,15000 -first 0
//
// It opens connections up to each step in turn (agent i, counted from -first,
// is ws://target/10.a.b.c/7000 with a.b.c from i, so clients given disjoint
// ranges have distinct identities), prints "step S holding N lost M" and waits
// for SIGUSR1 before the next step; after the last step each SIGUSR1 prints
// "holding N lost M". SIGTERM or SIGINT closes
// everything. Every connection answers the node's pings and does nothing else,
// as an idle iocore agent does. A program of its own rather than a wsbench
// workload: wsbench drives a local cluster it finds on the host, this runs in
// a container beside a node it only reaches over the network.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "conns:", err)
		os.Exit(1)
	}
}

func run() error {
	target := flag.String("target", "127.0.0.1:8427", "node's agent address host:port")
	steps := flag.String("steps", "50000", "comma-separated connection counts to reach in turn, non-decreasing (SIGUSR1 moves on)")
	first := flag.Int("first", 0, "index of this client's first agent identity")
	workers := flag.Int("dialers", 64, "connections dialed at once")
	timeout := flag.Duration("timeout", 30*time.Second, "dial and handshake timeout")
	retries := flag.Int("retries", 5, "attempts per connection")
	flag.Parse()
	var counts []int
	for _, s := range strings.Split(*steps, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 || (len(counts) > 0 && n < counts[len(counts)-1]) {
			return fmt.Errorf("bad -steps %q: non-decreasing counts", *steps)
		}
		counts = append(counts, n)
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	var lost atomic.Int64
	var mu sync.Mutex
	var conns []net.Conn
	opened := 0
	for si, n := range counts {
		start := time.Now()
		next := make(chan int)
		errc := make(chan error, *workers)
		var wg sync.WaitGroup
		for range *workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					nc, err := dialAgent(*target, *first+i, *timeout, *retries)
					if err != nil {
						errc <- err
						return
					}
					mu.Lock()
					conns = append(conns, nc)
					mu.Unlock()
					go hold(nc, &lost)
				}
			}()
		}
		var err error
	feed:
		for i := opened; i < n; i++ {
			select {
			case next <- i:
			case err = <-errc:
				break feed
			case <-stop:
				err = errors.New("stopped")
				break feed
			}
		}
		close(next)
		wg.Wait()
		if err == nil {
			select {
			case err = <-errc:
			default:
			}
		}
		if err != nil {
			closeAll(&mu, conns)
			return fmt.Errorf("opening connection %d: %w", len(conns)+1, err)
		}
		opened = n
		fmt.Printf("step %d holding %d lost %d (%.1f s)\n", si+1, n, lost.Load(), time.Since(start).Seconds())
		select {
		case <-usr1:
		case <-stop:
			closeAll(&mu, conns)
			return nil
		}
	}
	for {
		select {
		case <-usr1:
			fmt.Printf("holding %d lost %d\n", opened, lost.Load())
		case <-stop:
			closeAll(&mu, conns)
			return nil
		}
	}
}

func closeAll(mu *sync.Mutex, conns []net.Conn) {
	mu.Lock()
	defer mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

// dialAgent opens ws://target/<10.a.b.c>/7000 for agent i and completes the
// upgrade, retrying a few times (a SYN dropped while the backlog is full).
func dialAgent(target string, i int, timeout time.Duration, retries int) (net.Conn, error) {
	path := fmt.Sprintf("/10.%d.%d.%d/7000", i>>16&255, i>>8&255, i&255)
	var err error
	for attempt := range retries {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
		}
		var nc net.Conn
		if nc, err = upgrade(target, path, timeout); err == nil {
			return nc, nil
		}
	}
	return nil, err
}

func upgrade(target, path string, timeout time.Duration) (net.Conn, error) {
	nc, err := net.DialTimeout("tcp", target, timeout)
	if err != nil {
		return nil, err
	}
	_ = nc.SetDeadline(time.Now().Add(timeout))
	req := "GET " + path + " HTTP/1.1\r\nHost: " + target + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := io.WriteString(nc, req); err != nil {
		nc.Close()
		return nil, err
	}
	// The node sends nothing after the 101 until it pings, so the reader cannot
	// swallow frame bytes here; hold reads from the bare connection afterwards.
	resp, err := http.ReadResponse(bufio.NewReaderSize(nc, 512), nil)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		nc.Close()
		return nil, fmt.Errorf("handshake: HTTP %d", resp.StatusCode)
	}
	_ = nc.SetDeadline(time.Time{})
	return nc, nil
}

// hold answers pings until the connection ends; an end the client did not
// cause counts as lost.
func hold(nc net.Conn, lost *atomic.Int64) {
	br := bufio.NewReaderSize(nc, 128)
	var h [2]byte
	var buf [125]byte
	for {
		if _, err := io.ReadFull(br, h[:]); err != nil {
			if !errors.Is(err, net.ErrClosed) {
				lost.Add(1)
			}
			return
		}
		n := int(h[1] & 0x7f)
		if n > 125 || h[1]&0x80 != 0 { // only small unmasked frames come from an idle node
			nc.Close()
			lost.Add(1)
			return
		}
		if _, err := io.ReadFull(br, buf[:n]); err != nil {
			lost.Add(1)
			return
		}
		switch h[0] & 0x0f {
		case 9: // ping: pong with the same payload, masked with a zero key
			f := append([]byte{0x80 | 10, 0x80 | byte(n), 0, 0, 0, 0}, buf[:n]...)
			_ = nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := nc.Write(f); err != nil {
				lost.Add(1)
				return
			}
		case 8: // close
			nc.Close()
			lost.Add(1)
			return
		}
	}
}
