package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// The credentials of the attacked cluster. The attacker knows none of them except where a
// row says so; the wrong ones are what it tries instead.
const (
	secClusterKey = "cluster-key-7f3a9c1e5b2d4f6a8c0e"
	secWrongKey   = "guessed-key-0000000000000000000"
	secAdminToken = "admin-token-1b3d5f7a9c2e4a6c8e0b"
	secPayToken   = "pay-agent-token-5e7a9b1d3f5e7a9b1c"
	secFetchToken = "fetch-token-2c4e6a8c0e2a4c6e8a0d"
	secWrongToken = "wrong-token-9f9f9f9f9f9f9f9f9f9f"
)

// The peer handshake as cluster/peer.go and the brief describe it, rebuilt here so that the
// test speaks it as an outsider would.
const (
	peerHelloMagic = "WSR1"
	peerMACLabel   = "wsregistry peer v1"
	peerNonceLen   = 32
)

func peerHelloFor(kind byte) []byte { return []byte(peerHelloMagic + string(kind) + "\r\n") }

func peerMACFor(key string, kind byte, nonce []byte) []byte {
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(peerMACLabel))
	m.Write([]byte{kind})
	m.Write(nonce)
	return m.Sum(nil)
}

// outsider makes every connection from one loopback address outside the cluster's
// --trusted-networks, as a host elsewhere on the network would.
type outsider struct {
	ip     string
	dialer *net.Dialer
	http   *http.Client // for API calls (with a timeout)
	ws     *http.Client // for WebSocket dials (coder/websocket wants no client timeout)
}

func newOutsider(t *testing.T, ip string) *outsider {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: scaled(5 * time.Second)}
	tr := &http.Transport{DialContext: d.DialContext}
	wsTr := &http.Transport{DialContext: d.DialContext}
	t.Cleanup(func() { tr.CloseIdleConnections(); wsTr.CloseIdleConnections() })
	return &outsider{ip: ip, dialer: d,
		http: &http.Client{Transport: tr, Timeout: scaled(20 * time.Second)},
		ws:   &http.Client{Transport: wsTr}}
}

// apiReply is an HTTP answer as the table sees it.
type apiReply struct {
	status int
	body   []byte
	hdr    http.Header
	msg    string // "message" of a JSON error body
}

func (o *outsider) do(method, url, token string, body []byte) (apiReply, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return apiReply{}, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := o.http.Do(req)
	if err != nil {
		return apiReply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	r := apiReply{status: resp.StatusCode, body: b, hdr: resp.Header}
	var e struct{ Message string }
	if json.Unmarshal(b, &e) == nil {
		r.msg = e.Message
	}
	return r, err
}

// peer opens a raw TCP connection to a peer port, with a deadline for the whole row.
func (o *outsider) peer(addr string) (net.Conn, error) {
	c, err := o.dialer.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(scaled(10 * time.Second)))
	return c, nil
}

// expectPeerRefusal reads what the peer port answers until it closes: it must be the
// refusal byte (after the nonce, when nonceFirst) and a reason containing want.
func expectPeerRefusal(c io.Reader, nonceFirst bool, want string) error {
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		return fmt.Errorf("reading the answer: %v (got %q)", err, b)
	}
	if nonceFirst {
		if len(b) < peerNonceLen {
			return fmt.Errorf("no nonce: got %q", b)
		}
		b = b[peerNonceLen:]
	}
	if len(b) == 0 || b[0] != 0x01 || !strings.Contains(string(b[1:]), want) {
		return fmt.Errorf("want refusal 0x01 with %q, got %q", want, b)
	}
	return nil
}

// clusterState is what must not change: this node's copy of the replicated state.
type clusterState struct {
	namespaces   string
	appliedIndex uint64
	term         uint64
	leader       string
	members      int
	fenced       bool
}

func (o *outsider) state(p *proc) (clusterState, error) {
	ns, err := o.do("GET", "http://"+p.http+"/v1/namespaces", "", nil)
	if err != nil || ns.status != 200 {
		return clusterState{}, fmt.Errorf("namespaces: %d %v", ns.status, err)
	}
	cl, err := o.do("GET", "http://"+p.http+"/v1/cluster", "", nil)
	if err != nil || cl.status != 200 {
		return clusterState{}, fmt.Errorf("cluster: %d %v", cl.status, err)
	}
	var v struct {
		AppliedIndex uint64 `json:"applied_index"`
		Term         uint64 `json:"term"`
		Leader       string `json:"leader"`
		Fenced       bool   `json:"fenced"`
		Members      []any  `json:"members"`
	}
	if err := json.Unmarshal(cl.body, &v); err != nil {
		return clusterState{}, err
	}
	return clusterState{namespaces: string(ns.body), appliedIndex: v.AppliedIndex, term: v.Term,
		leader: v.Leader, members: len(v.Members), fenced: v.Fenced}, nil
}

// refusals sums wsregistry_auth_refusals_total by reason over the nodes.
func (o *outsider) refusals(t *testing.T, procs ...*proc) map[string]int {
	t.Helper()
	sum := map[string]int{}
	for _, p := range procs {
		r, err := o.do("GET", "http://"+p.http+"/metrics", "", nil)
		if err != nil || r.status != 200 {
			t.Fatalf("metrics of %s: %d %v", p.http, r.status, err)
		}
		for line := range strings.Lines(string(r.body)) {
			rest, ok := strings.CutPrefix(line, `wsregistry_auth_refusals_total{reason="`)
			if !ok {
				continue
			}
			reason, val, _ := strings.Cut(rest, `"} `)
			n, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			sum[reason] += int(n)
		}
	}
	return sum
}

// attackRow is one attempt; reason is the wsregistry_auth_refusals_total label it must add
// one to ("" for none).
type attackRow struct {
	name   string
	reason string
	run    func() (string, error) // what was observed, or why the row fails
}

// A live three-node cluster formed with --cluster-key, --admin-token and a token file, and
// trusting only its own /24, is attacked from another loopback address: every attempt
// without the right credential is refused with the documented status and a message naming
// the flag, is counted, and leaves the replicated state byte for byte as it was.
func TestSecurity_AttacksFromAnUntrustedAddressChangeNothing(t *testing.T) {
	prefix, ips := loopbackIPs(3)
	other := loopbackNet()
	for other == prefix {
		other = loopbackNet()
	}
	o := newOutsider(t, other+"7")

	tokenFile := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokenFile, []byte(
		"# NAME   SCOPES  TOKEN  [NAMESPACES]\n"+
			"pay      agent   "+secPayToken+"  payments-*\n"+
			"fetcher  fetch   "+secFetchToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	trusted := prefix + "0/24"
	procs := startNodes(t, ips, func(i int, all []nodeAddrs) (string, []string, []string) {
		return t.TempDir(), nil, []string{
			"--node-id", fmt.Sprintf("node%d", i), "--data-dir", "d",
			"--bootstrap-expect", "3", "--join", peerAddrs(all),
			"--cluster-key", secClusterKey, "--admin-token", secAdminToken, "--token-file", tokenFile,
			"--trusted-networks", trusted, "--fault-injection",
			// Slower than the other process tests: an election during the table would add a
			// log entry and spoil the before/after comparison; failover is not the point.
			"--raft-heartbeat-timeout", "1s", "--raft-election-timeout", "1s", "--raft-leader-lease-timeout", "500ms",
			"--log-level", "debug"}
	})
	for _, p := range procs {
		p.waitReady(30 * time.Second)
	}
	for _, p := range procs {
		var v struct {
			PeerSecurity string `json:"peer_security"`
		}
		if p.getJSON("/v1/cluster", &v); v.PeerSecurity != "cluster-key" {
			t.Fatalf("%s: peer_security %q, want cluster-key", p.http, v.PeerSecurity)
		}
	}

	// A snapshot of the state before any agent: what a rogue restore would roll back to.
	old, err := o.do("GET", "http://"+procs[0].http+"/v1/snapshot", secAdminToken, nil)
	if err != nil || old.status != 200 || len(old.body) == 0 {
		t.Fatalf("snapshot save with the admin token: %d %v %s", old.status, err, old.body)
	}

	// The legitimate payments agent (token in the path prefix, as unchanged agents send it)
	// registers before the "before" picture.
	pay := o.agent(t, procs[1].ws, "/t/"+secPayToken, "10.9.8.7:9001")
	if r, err := pay.call("online", "payments-eu"); err != nil || r.Status != 200 {
		t.Fatalf("online payments-eu with the payments token: %+v %v", r, err)
	}
	var before []clusterState
	eventually(t, 10*time.Second, func() bool {
		before = before[:0]
		for _, p := range procs {
			s, err := o.state(p)
			if err != nil || !strings.Contains(s.namespaces, `"10.9.8.7:9001"`) {
				return false
			}
			before = append(before, s)
		}
		for _, s := range before[1:] {
			if s.appliedIndex != before[0].appliedIndex || s.namespaces != before[0].namespaces {
				return false
			}
		}
		return true
	}, "the nodes never agreed on the state after the payments registration")
	refusedBefore := o.refusals(t, procs...)

	// A peer that connects and says nothing is cut off after the handshake timeout (5 s):
	// started first so that its wait overlaps the table.
	silent := make(chan error, 1)
	go func() {
		c, err := o.peer(procs[2].raft)
		if err != nil {
			silent <- err
			return
		}
		defer c.Close()
		// The handshake promises a reason line before the close, also to a client that
		// let its deadline pass; and the connection is counted without being accepted.
		b, err := io.ReadAll(c)
		switch {
		case err != nil:
			silent <- fmt.Errorf("not closed by the node: %v (got %q)", err, b)
		default:
			silent <- expectPeerRefusal(bytes.NewReader(b), false, "no handshake")
		}
	}()

	admin := func(i int) string { return "http://" + procs[i%3].http }
	var rows []attackRow
	type adminOp struct {
		what, method, path string
		body               []byte
	}
	ops := []adminOp{
		{"join", "POST", "/v1/join?addr=" + o.ip + ":8429", nil},
		{"remove", "POST", "/v1/remove/node2", nil},
		{"snapshot restore", "POST", "/v1/snapshot", old.body},
		{"debug partition", "POST", "/v1/debug/partition?on=true", nil},
	}
	creds := []struct {
		name, token, reason string
		status              int
		msg                 []string
	}{
		{"without a token", "", "no_token", 401, []string{"needs a token", "--admin-token"}},
		{"with a wrong token", secWrongToken, "bad_token", 401, []string{"not a configured token", "--admin-token"}},
		{"with the fetch token", secFetchToken, "scope", 403, []string{`"fetcher" does not have scope admin`, "--admin-token"}},
	}
	for oi, op := range ops {
		for ci, cr := range creds {
			url := admin(oi*len(creds)+ci) + op.path
			rows = append(rows, attackRow{"admin " + op.what + " " + cr.name, cr.reason, func() (string, error) {
				return expectHTTP(o, op.method, url, cr.token, op.body, cr.status, cr.msg...)
			}})
		}
	}
	rows = append(rows,
		attackRow{"fetch without a token", "no_token", func() (string, error) {
			return expectHTTP(o, "POST", admin(0)+"/v1/fetch/payments-eu/echo", "", []byte(`[1]`), 401, "--token-file")
		}},
		attackRow{"fetch with a wrong token", "bad_token", func() (string, error) {
			return expectHTTP(o, "POST", admin(1)+"/v1/fetch/payments-eu/echo", secWrongToken, []byte(`[1]`), 401, "--token-file")
		}},
		attackRow{"fetch with the agent token", "scope", func() (string, error) {
			return expectHTTP(o, "POST", admin(2)+"/v1/fetch/payments-eu/echo", secPayToken, []byte(`[1]`), 403, `"pay" does not have scope fetch`, "--token-file")
		}},
	)
	for i, path := range []string{"/internal/v1/propose", "/internal/v1/join", "/internal/v1/restore"} {
		rows = append(rows, attackRow{"POST " + path + " on the public port, even with the admin token", "", func() (string, error) {
			return expectHTTP(o, "POST", admin(i)+path, secAdminToken, []byte(`{}`), 404)
		}})
	}
	rows = append(rows,
		attackRow{"peer port: raft bytes without a handshake", "peer", func() (string, error) {
			c, err := o.peer(procs[0].raft)
			if err != nil {
				return "", err
			}
			defer c.Close()
			// What raft's own transport sends first: an RPC type byte, then msgpack.
			c.Write([]byte{0x00, 0x85, 0xa4, 'T', 'e', 'r', 'm', 0x07, 0xa6, 'L', 'e', 'a', 'd', 'e', 'r'})
			return "refused", expectPeerRefusal(c, false, "bad handshake")
		}},
		attackRow{"peer port: HMAC of a wrong cluster key", "peer", func() (string, error) {
			c, err := o.peer(procs[1].raft)
			if err != nil {
				return "", err
			}
			defer c.Close()
			c.Write(peerHelloFor('R'))
			nonce := make([]byte, peerNonceLen)
			if _, err := io.ReadFull(c, nonce); err != nil {
				return "", fmt.Errorf("no nonce: %v", err)
			}
			c.Write(peerMACFor(secWrongKey, 'R', nonce))
			return "refused", expectPeerRefusal(c, false, "wrong cluster key (--cluster-key)")
		}},
		attackRow{"peer port: a handshake replayed from an accepted connection", "peer", func() (string, error) {
			// Record a genuine handshake (the test knows the key) and check it opens the door...
			c, err := o.peer(procs[2].raft)
			if err != nil {
				return "", err
			}
			sent := peerHelloFor('I')
			c.Write(sent)
			nonce := make([]byte, peerNonceLen)
			if _, err := io.ReadFull(c, nonce); err != nil {
				c.Close()
				return "", fmt.Errorf("no nonce: %v", err)
			}
			mac := peerMACFor(secClusterKey, 'I', nonce)
			c.Write(mac)
			sent = append(sent, mac...)
			status := make([]byte, 1)
			if _, err := io.ReadFull(c, status); err != nil || status[0] != 0x00 {
				c.Close()
				return "", fmt.Errorf("the right key was not accepted (status %x, %v): the test's handshake is wrong", status, err)
			}
			fmt.Fprintf(c, "GET /internal/v1/info HTTP/1.1\r\nHost: peer\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 200 {
				c.Close()
				return "", fmt.Errorf("internal info over the accepted connection: %v %v", resp, err)
			}
			resp.Body.Close()
			c.Close()
			// ...then send the same bytes on a new connection without reading the new nonce.
			c2, err := o.peer(procs[2].raft)
			if err != nil {
				return "", err
			}
			defer c2.Close()
			c2.Write(sent)
			return "the genuine handshake was accepted and served /internal/v1/info; its replay was refused",
				expectPeerRefusal(c2, true, "wrong cluster key (--cluster-key)")
		}},
		attackRow{"peer port: a raw HTTP request", "peer", func() (string, error) {
			c, err := o.peer(procs[0].raft)
			if err != nil {
				return "", err
			}
			defer c.Close()
			fmt.Fprintf(c, "POST /internal/v1/propose HTTP/1.1\r\nHost: peer\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
			return "refused", expectPeerRefusal(c, false, "bad handshake")
		}},
		attackRow{"peer port: an HTTP client", "peer", func() (string, error) {
			r, err := o.do("POST", "http://"+procs[1].raft+"/internal/v1/propose", "", []byte(`{}`))
			if err == nil {
				return "", fmt.Errorf("the peer port answered HTTP: %d %s", r.status, r.body)
			}
			return err.Error(), nil
		}},
		attackRow{"agent without a token", "no_token", func() (string, error) {
			return o.agentRefused(procs[0].ws, "/10.9.8.8/9002", nil, 401)
		}},
		attackRow{"agent with a wrong token (?token=)", "bad_token", func() (string, error) {
			return o.agentRefused(procs[1].ws, "/10.9.8.8/9002?token="+secWrongToken, nil, 401)
		}},
		attackRow{"agent with the fetch token (Authorization)", "scope", func() (string, error) {
			return o.agentRefused(procs[2].ws, "/10.9.8.8/9002", http.Header{"Authorization": {"Bearer " + secFetchToken}}, 403)
		}},
		attackRow{"payments agent registering orders", "namespace", func() (string, error) {
			r, err := pay.call("online", "orders")
			if err != nil {
				return "", err
			}
			if r.Status != 403 || !strings.Contains(r.Message, `"orders"`) {
				return "", fmt.Errorf("want status 403 naming \"orders\", got %+v", r)
			}
			w, err := pay.call("where", "payments-eu")
			if err != nil || w.Status != 200 || w.Data != "10.9.8.7:9001" {
				return "", fmt.Errorf("the connection no longer answers where after the refusal: %+v %v", w, err)
			}
			return fmt.Sprintf("%d %q; where payments-eu on the same connection: %v", r.Status, r.Message, w.Data), nil
		}},
		attackRow{"admin token: snapshot save", "", func() (string, error) {
			r, err := o.do("GET", admin(2)+"/v1/snapshot", secAdminToken, nil)
			if err != nil || r.status != 200 || len(r.body) == 0 || r.hdr.Get("X-Wsregistry-Snapshot-Index") == "" {
				return "", fmt.Errorf("want 200 with a snapshot, got %d %v (%d bytes)", r.status, err, len(r.body))
			}
			return fmt.Sprintf("200, %d bytes at index %s", len(r.body), r.hdr.Get("X-Wsregistry-Snapshot-Index")), nil
		}},
	)

	want := map[string]int{"peer": 1} // the silent peer
	for _, row := range rows {
		got, err := row.run()
		if err != nil {
			t.Errorf("%s: %v", row.name, err)
			continue
		}
		t.Logf("%-62s %s", row.name+":", got)
		if row.reason != "" {
			want[row.reason]++
		}
	}
	select {
	case err := <-silent:
		if err != nil {
			t.Errorf("peer port: a silent connection: %v", err)
		}
	case <-time.After(scaled(20 * time.Second)):
		t.Error("peer port: a silent connection was never cut off")
	}

	// Byte for byte as before, on every node.
	for i, p := range procs {
		after, err := o.state(p)
		if err != nil {
			t.Fatalf("%s: %v", p.http, err)
		}
		b := before[i]
		if after.term != b.term || after.leader != b.leader {
			t.Errorf("%s: leader %s term %d became %s term %d during the table (an election adds log entries)", p.http, b.leader, b.term, after.leader, after.term)
		}
		if after.appliedIndex != b.appliedIndex {
			t.Errorf("%s: applied_index %d became %d: something was written", p.http, b.appliedIndex, after.appliedIndex)
		}
		if after.namespaces != b.namespaces {
			t.Errorf("%s: /v1/namespaces changed:\nbefore %s\nafter  %s", p.http, b.namespaces, after.namespaces)
		}
		if after.members != 3 || after.fenced {
			t.Errorf("%s: %d members, fenced %v after the table", p.http, after.members, after.fenced)
		}
	}
	refusedAfter := o.refusals(t, procs...)
	for reason, n := range want {
		if got := refusedAfter[reason] - refusedBefore[reason]; got != n {
			t.Errorf("wsregistry_auth_refusals_total{reason=%q} grew by %d, want %d (before %v, after %v)", reason, got, n, refusedBefore, refusedAfter)
		}
	}
	t.Logf("refusals counted: before %v, after %v", refusedBefore, refusedAfter)

	// The refusals were audited with the outsider's address; no secret reached a log.
	var logs strings.Builder
	for _, p := range procs {
		logs.WriteString(p.log.String())
	}
	if !strings.Contains(logs.String(), "audit=") || !strings.Contains(logs.String(), "remote="+o.ip+":") {
		t.Errorf("no audit line with remote=%s: in the nodes' logs", o.ip)
	}
	for _, secret := range []string{secClusterKey, secWrongKey, secAdminToken, secPayToken, secFetchToken, secWrongToken} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("a log contains the secret %q", secret)
		}
	}

	// A node started without the cluster key cannot join: the members refuse it, and it says so.
	rogue := startNode(t, t.TempDir(), other+"8", nil, "--node-id", "rogue", "--data-dir", "d", "--join", peerAddrs(addrsOf(procs)))
	eventually(t, 15*time.Second, func() bool {
		l := rogue.log.String()
		return strings.Contains(l, "a peer refused this node") && strings.Contains(l, "wrong cluster key (--cluster-key)")
	}, "the node without --cluster-key never logged that the members refused it:\n%s", rogue.log.String())
	eventually(t, 5*time.Second, func() bool {
		return o.refusals(t, procs...)["peer"] > refusedAfter["peer"]
	}, "the members did not count the keyless node's attempts as peer refusals")
	for _, p := range procs {
		var v struct{ Members []struct{ ID string } }
		p.getJSON("/v1/cluster", &v)
		var ids []string
		for _, m := range v.Members {
			ids = append(ids, m.ID)
		}
		if !slices.Equal(ids, []string{"node0", "node1", "node2"}) {
			t.Errorf("%s: members %v after the keyless node tried to join", p.http, ids)
		}
	}
}

// A node started without --cluster-key, trusting only itself, refuses a node that tries to
// join it (the joiner has a key, which such a node does not check): the joiner's log says
// why and the node counts the refusal.
func TestSecurity_NodeWithoutClusterKeyRefusesPeersOutsideTrustedNetworks(t *testing.T) {
	_, ips := loopbackIPs(2)
	lone := startNode(t, t.TempDir(), ips[0], nil, "--node-id", "lone", "--data-dir", "d",
		"--trusted-networks", ips[0]+"/32")
	lone.waitReady(20 * time.Second)
	var v struct {
		PeerSecurity string `json:"peer_security"`
	}
	if lone.getJSON("/v1/cluster", &v); v.PeerSecurity != "trusted-hosts" {
		t.Fatalf("peer_security %q, want trusted-hosts", v.PeerSecurity)
	}
	joiner := startNode(t, t.TempDir(), ips[1], nil, "--node-id", "joiner", "--data-dir", "d",
		"--cluster-key", secClusterKey, "--join", lone.raft)
	eventually(t, 15*time.Second, func() bool {
		l := joiner.log.String()
		return strings.Contains(l, "a peer refused this node") && strings.Contains(l, "is not on --trusted-networks")
	}, "the joiner never logged the refusal:\n%s", joiner.log.String())
	o := newOutsider(t, ips[0])
	eventually(t, 5*time.Second, func() bool { return o.refusals(t, lone)["peer"] > 0 },
		"the lone node did not count the refusal in wsregistry_auth_refusals_total{reason=\"peer\"}")
	var c struct{ Members []struct{ ID string } }
	lone.getJSON("/v1/cluster", &c)
	if len(c.Members) != 1 || c.Members[0].ID != "lone" {
		t.Fatalf("members of the lone node: %+v", c.Members)
	}
}

func addrsOf(procs []*proc) []nodeAddrs {
	var all []nodeAddrs
	for _, p := range procs {
		all = append(all, nodeAddrs{ws: p.ws, http: p.http, raft: p.raft})
	}
	return all
}

// expectHTTP sends one request and checks its status and that the message contains each of msg.
func expectHTTP(o *outsider, method, url, token string, body []byte, status int, msg ...string) (string, error) {
	r, err := o.do(method, url, token, body)
	if err != nil {
		return "", err
	}
	if r.status != status {
		return "", fmt.Errorf("want %d, got %d %s", status, r.status, r.body)
	}
	for _, m := range msg {
		if !strings.Contains(r.msg, m) {
			return "", fmt.Errorf("message %q does not contain %q (body %s)", r.msg, m, r.body)
		}
	}
	return fmt.Sprintf("%d %q", r.status, r.msg), nil
}

// agentRefused dials the agent port and expects the upgrade to be refused with status.
func (o *outsider) agentRefused(wsAddr, path string, hdr http.Header, status int) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+wsAddr+path, &websocket.DialOptions{HTTPClient: o.ws, HTTPHeader: hdr})
	if err == nil {
		c.CloseNow()
		return "", errors.New("the agent port accepted the connection")
	}
	if resp == nil || resp.StatusCode != status {
		return "", fmt.Errorf("want HTTP %d before the upgrade, got %v", status, err)
	}
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %q", resp.StatusCode, strings.TrimSpace(string(b))), nil
}

// frameAgent is an agent connection that sends registry commands and reads their replies.
type frameAgent struct {
	c  *websocket.Conn
	id int
}

type frameReply struct {
	Status  any    `json:"status"`
	Data    any    `json:"data"`
	Message string `json:"message"`
}

func (o *outsider) agent(t *testing.T, wsAddr, prefix, self string) *frameAgent {
	t.Helper()
	host, port, _ := net.SplitHostPort(self)
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+wsAddr+prefix+"/"+host+"/"+port, &websocket.DialOptions{HTTPClient: o.ws})
	if err != nil {
		t.Fatalf("agent dial %s: %v", wsAddr, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return &frameAgent{c: c}
}

func (a *frameAgent) call(cmd, ns string) (frameReply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), scaled(10*time.Second))
	defer cancel()
	id := a.id
	a.id++
	msg := fmt.Sprintf(`{"id":%d,"twoway":true,"data":{"cmd":%q,"props":[%q],"protocol":"ws"},"mode":0}`, id, cmd, ns)
	if err := a.c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		return frameReply{}, err
	}
	_, b, err := a.c.Read(ctx)
	if err != nil {
		return frameReply{}, err
	}
	var f struct {
		ID   int        `json:"id"`
		Mode int        `json:"mode"`
		Data frameReply `json:"data"`
	}
	if err := json.Unmarshal(b, &f); err != nil || f.ID != id || f.Mode != 1 {
		return frameReply{}, fmt.Errorf("not the response to request %d: %s", id, b)
	}
	if n, ok := f.Data.Status.(float64); ok {
		f.Data.Status = int(n)
	}
	return f.Data, nil
}
