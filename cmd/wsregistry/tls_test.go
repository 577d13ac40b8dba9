package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/internal/testcerts"
)

// Three processes with --tls-cert/--tls-key/--tls-ca: HTTPS, WSS, and mutual TLS for raft.
func TestProcess_TLSClusterServesWSSAndRefusesRaftWithoutClientCert(t *testing.T) {
	net0 := loopbackNet()
	var ips []net.IP
	var join []string
	for i := range 3 {
		ips = append(ips, net.ParseIP(fmt.Sprintf("%s%d", net0, i+1)))
		join = append(join, fmt.Sprintf("%s%d:8429", net0, i+1))
	}
	certs, err := testcerts.Write(t.TempDir(), ips...)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: certs.Pool}}}
	procs := make([]*proc, 3)
	for i := range 3 {
		ip := ips[i].String()
		procs[i] = startProc(t, t.TempDir(), ip+":8427", ip+":8428", nil,
			"--node-id", fmt.Sprintf("node%d", i), "--data-dir", "d",
			"--ws-addr", ip+":8427", "--http-addr", ip+":8428", "--raft-addr", ip+":8429",
			"--bootstrap-expect", "3", "--join", strings.Join(join, ","),
			"--tls-cert", certs.Cert, "--tls-key", certs.Key, "--tls-ca", certs.CA,
			"--raft-heartbeat-timeout", "200ms", "--raft-election-timeout", "200ms", "--raft-leader-lease-timeout", "100ms")
	}
	for _, p := range procs {
		p := p
		eventually(t, 30*time.Second, func() bool {
			code, _, _ := runCLI("healthcheck", "--addr", "https://"+p.http, "--tls-ca", certs.CA, "--timeout", "2s")
			return code == 0
		}, "TLS node %s never ready:\n%s", p.http, p.log.String())
	}

	// An agent over WSS on node 0, found over HTTPS on node 2.
	ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
	defer cancel()
	c, _, err := websocket.Dial(ctx, "wss://"+procs[0].ws+"/10.0.0.7/9001", &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.Write(ctx, websocket.MessageText, []byte(`{"id":0,"twoway":true,"data":{"cmd":"online","props":["tls-svc"],"protocol":"ws"},"mode":0}`))
	if _, b, err := c.Read(ctx); err != nil || !strings.Contains(string(b), `"status":200`) {
		t.Fatalf("online over wss: %s %v", b, err)
	}
	eventually(t, 5*time.Second, func() bool {
		resp, err := hc.Get("https://" + procs[2].http + "/v1/where/tls-svc")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "registration not visible over HTTPS on another node")

	// Plain HTTP to the HTTPS port is not served.
	if resp, err := http.Get("http://" + procs[1].http + "/v1/cluster"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("HTTPS port answered plain HTTP")
		}
	}
	// A raft peer without a client certificate is refused.
	conn, err := tls.Dial("tcp", ips[1].String()+":8429", &tls.Config{RootCAs: certs.Pool})
	if err == nil {
		conn.SetDeadline(time.Now().Add(scaled(5 * time.Second)))
		conn.Write([]byte{0})
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !(strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "EOF") || strings.Contains(err.Error(), "reset")) {
		t.Fatalf("raft accepted a peer without a client certificate: %v", err)
	}
}
