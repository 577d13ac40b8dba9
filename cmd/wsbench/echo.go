package main

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// The echo floor: what the same open-loop generator measures against a server that does
// nothing but answer each request frame with a fixed reply, in its own process on the same
// machine. It separates the latency the registry adds from what loopback TCP, the Go
// runtime and the shared cores cost anyway (on this machine a bare echo over 64
// connections at a few thousand requests/s already has a p50 of ~300 µs, against ~90 µs
// over 8: an idle connection's next request wakes slowly).

// echoServerCmd is `wsbench echo-server -listen ADDR`: it accepts WebSocket upgrades (any
// path) and answers every text frame {"id":N,...} with {"id":N,"status":200}, replies to
// frames that arrived together leaving in one write, like the registry's.
func echoServerCmd(args []string) error {
	fs := flag.NewFlagSet("echo-server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.7.1:8499", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	fmt.Println("listening", ln.Addr())
	for {
		nc, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer nc.Close()
			_ = serveEcho(nc)
		}()
	}
}

func serveEcho(nc net.Conn) error {
	br := bufio.NewReaderSize(nc, 16<<10)
	tp := textproto.NewReader(br)
	if _, err := tp.ReadLine(); err != nil {
		return err
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return err
	}
	sum := sha1.Sum([]byte(hdr.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if _, err := io.WriteString(nc, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "+
		base64.StdEncoding.EncodeToString(sum[:])+"\r\n\r\n"); err != nil {
		return err
	}
	var out, payload []byte
	for {
		op, p, err := readFrame(br, payload, 1<<20)
		if err != nil {
			return err
		}
		payload = p[:0]
		switch op {
		case 8:
			return nil
		case 1:
			id, _, _ := bytes.Cut(bytes.TrimPrefix(p, []byte(`{"id":`)), []byte(","))
			reply := `{"id":` + string(id) + `,"status":200}`
			out = append(out, 0x81, byte(len(reply)))
			out = append(out, reply...)
		}
		if br.Buffered() == 0 && len(out) > 0 {
			if _, err := nc.Write(out); err != nil {
				return err
			}
			out = out[:0]
		}
	}
}

// echoServers are `wsbench echo-server` processes started for one run (one, or one per node
// with -echo-procs, so the floor pays for as many processes as the cluster has).
type echoServers struct {
	cmds  []*exec.Cmd
	addrs []string
}

func (b *bench) startEcho(n int) (*echoServers, error) {
	e := &echoServers{}
	for i := range max(n, 1) {
		addr := b.cl.host + ":" + strconv.Itoa(8499+i)
		cmd := exec.Command(os.Args[0], "echo-server", "-listen", addr)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			e.stop()
			return nil, err
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			e.stop()
			return nil, err
		}
		e.cmds = append(e.cmds, cmd)
		e.addrs = append(e.addrs, addr)
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "listening") {
			e.stop()
			return nil, fmt.Errorf("echo server did not start: %q %v", line, err)
		}
	}
	return e, nil
}

func (e *echoServers) stop() {
	for _, cmd := range e.cmds {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
}

func (e *echoServers) pids() []int {
	var out []int
	for _, cmd := range e.cmds {
		out = append(out, cmd.Process.Pid)
	}
	return out
}

// dial connects n connections, connection i to server i%len (as connectAll spreads over nodes).
func (e *echoServers) dial(b *bench, n int, s shape) ([]*wsConn, error) {
	return b.dialMany(n, func(i int) string { return e.addrs[i%len(e.addrs)] }, s.bufSize())
}

// variant names the number of processes when it is not one.
func (e *echoServers) variant(v string) string {
	if len(e.cmds) > 1 {
		return joinWords(v, strconv.Itoa(len(e.cmds))+" procs")
	}
	return v
}

func echoGen(_ int) gen {
	return func(buf []byte, id int64) []byte { return appendRequest(buf, id, "echo", "x") }
}

// echoPaced runs the paced open loop of where-paced against fresh echo server processes:
// k connections, or s.conns under the agent pattern.
func (b *bench) echoPaced(rate float64, k, procs int, s shape) (Result, error) {
	e, err := b.startEcho(procs)
	if err != nil {
		return Result{}, err
	}
	defer e.stop()
	if s.agent() {
		k = s.conns
	}
	conns, err := e.dial(b, k, s)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(conns)
	res := b.paced(Result{Workload: "echo floor", Variant: fmt.Sprintf("paced %.0f/s", rate), Conns: k},
		conns, rate, s, e.pids(), echoGen)
	res.Variant = e.variant(res.Variant)
	return res, nil
}

// echo is the closed loop of where against fresh echo server processes, in the same shape:
// c requests in flight over min(c, k) connections, or rotating over s.conns under the agent
// pattern. The echo server answers at once, so it runs at a higher rate than where does.
func (b *bench) echo(c, k, procs int, s shape) (Result, error) {
	e, err := b.startEcho(procs)
	if err != nil {
		return Result{}, err
	}
	defer e.stop()
	k = min(k, c)
	if s.agent() {
		k = s.conns
	}
	conns, err := e.dial(b, k, s)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(conns)
	var res Result
	if s.agent() {
		res = b.runAgent("echo floor", c, conns, s, e.pids(), echoGen)
	} else {
		res = b.runClosed("echo floor", c, k, conns, e.pids(), echoGen)
	}
	res.Variant = e.variant(res.Variant)
	return res, nil
}
