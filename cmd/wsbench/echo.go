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

// echoPaced runs the paced open loop of where-paced against a fresh echo server process.
func (b *bench) echoPaced(rate float64, k int) (Result, error) {
	addr := b.cl.host + ":8499"
	cmd := exec.Command(os.Args[0], "echo-server", "-listen", addr)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return Result{}, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return Result{}, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "listening") {
		return Result{}, fmt.Errorf("echo server did not start: %q %v", line, err)
	}
	conns := make([]*wsConn, k)
	for i := range conns {
		c, err := dialWS(addr, b.keys.next(b.keyIP), b.timeout, 0)
		if err != nil {
			closeAll(conns[:i])
			return Result{}, err
		}
		conns[i] = c
	}
	defer closeAll(conns)
	res := Result{Workload: "echo floor", Variant: fmt.Sprintf("paced %.0f/s", rate), Conns: k}
	return b.paced(res, conns, rate, []int{cmd.Process.Pid}, func(_ int) gen {
		return func(buf []byte, id int64) []byte { return appendRequest(buf, id, "echo", "x") }
	}), nil
}
