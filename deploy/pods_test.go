package deploy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
)

// podIP is what the downward API gives pod i in this test: its own loopback address, so
// three processes can listen on the same ports as three pods do.
func podIP(i int) string {
	prefix := os.Getenv("WSREGISTRY_K8S_TEST_PREFIX") // e.g. 127.0.5 (addresses .1 .2 .3)
	if prefix == "" {
		prefix = "127.0.5"
	}
	return fmt.Sprintf("%s.%d", prefix, i+1)
}

func scaled(d time.Duration) time.Duration {
	if s, err := strconv.Atoi(os.Getenv("WSREGISTRY_TEST_SCALE")); err == nil && s > 1 {
		return d * time.Duration(s)
	}
	return d
}

// expand replaces $(VAR) with VAR's value as the kubelet does in env values, command and
// args: an undefined $(VAR) stays as written and $$ is a literal $.
func expand(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "x", "B": "y"}
	for in, want := range map[string]string{
		"$(A):8428": "x:8428", "--a=$(A)$(B)": "--a=xy", "$(C)": "$(C)", "$$(A)": "$(A)", "a$": "a$", "$(A": "$(A",
	} {
		if got := expand(in, vars); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

// imageEnv is the ENV of deploy/Dockerfile: a container starts with it under the pod's env.
func imageEnv(t *testing.T) [][2]string {
	t.Helper()
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var env [][2]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "ENV "); ok {
			for _, kv := range strings.Fields(rest) {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					t.Fatalf("Dockerfile: ENV %q: use the KEY=value form", rest)
				}
				env = append(env, [2]string{k, v})
			}
		}
	}
	return env
}

// secrets are the Secrets of the test's namespace, name -> key -> value, as
// `kubectl create secret generic` makes them (README).
type secrets map[string]map[string]string

// newSecrets makes the Secret the README tells to create, with random values.
func newSecrets(t *testing.T) secrets {
	t.Helper()
	random := func() string {
		b := make([]byte, 32)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		return hex.EncodeToString(b)
	}
	return secrets{secretName: {secretKeyCluster: random(), secretKeyAdmin: random()}}
}

// pod is one StatefulSet replica run as a local process.
type pod struct {
	name, ip string
	env      []string // KEY=value, as the container gets it
	argv     []string // command + args, expanded
	preStop  []string
	ports    []int32         // container ports: the process listens on them at the pod IP
	dir      string          // its working directory: its own, never the test's
	secret   map[string]bool // env names whose values come from a Secret (never logged)
	httpPort int32
	log      string
	cmd      *exec.Cmd
	done     chan error
}

// podsFor builds what the kubelet would run for replica i: image env, then the container's
// env in order (downward API and Secrets resolved like the kubelet does: a missing optional
// one is left unset, a missing required one fails the pod), then $(VAR) expansion of command
// and args. The claim's mountPath is replaced by a directory of the test, the only liberty
// taken.
func podFor(t *testing.T, sts *appsv1.StatefulSet, i int, dir string, sec secrets) *pod {
	t.Helper()
	c := container(t, sts)
	p := &pod{name: fmt.Sprintf("%s-%d", sts.Name, i), ip: podIP(i), secret: map[string]bool{}}
	p.dir = filepath.Join(dir, p.name)
	dataDir := filepath.Join(p.dir, "data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	mounts := map[string]string{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.MountPath] = dataDir
	}
	remapPath := func(s string) string {
		for from, to := range mounts {
			if s == from || strings.HasPrefix(s, from+"/") {
				return to + strings.TrimPrefix(s, from)
			}
		}
		return s
	}
	remap := func(s string) string {
		if k, v, ok := strings.Cut(s, "="); ok && strings.HasPrefix(k, "-") {
			return k + "=" + remapPath(v) // --data-dir=/data
		}
		return remapPath(s)
	}
	vars := map[string]string{"HOSTNAME": p.name}
	order := []string{"HOSTNAME"}
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			order = append(order, k)
		}
		vars[k] = v
	}
	for _, kv := range imageEnv(t) {
		set(kv[0], remap(kv[1]))
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			set(e.Name, remap(expand(e.Value, vars)))
		case e.ValueFrom.FieldRef != nil:
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				set(e.Name, p.name)
			case "metadata.namespace":
				set(e.Name, "default")
			case "status.podIP":
				set(e.Name, p.ip)
			default:
				t.Fatalf("env %s: the test does not know field %s", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			v, ok := sec[ref.Name][ref.Key]
			switch {
			case ok:
				set(e.Name, v)
				p.secret[e.Name] = true
			case ref.Optional != nil && *ref.Optional:
				// The kubelet leaves a variable from a missing optional Secret unset.
			default:
				t.Fatalf("env %s: the pod needs Secret %q key %q, which the README does not tell to create (the kubelet would not start it)", e.Name, ref.Name, ref.Key)
			}
		default:
			t.Fatalf("env %s: the test does not know this source %+v", e.Name, e.ValueFrom)
		}
	}
	// PATH lets the test's own wrapper (sh, mount) run; the image's binaries use absolute paths.
	set("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
	for _, k := range order {
		p.env = append(p.env, k+"="+vars[k])
	}
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		p.argv = append(p.argv, remap(expand(a, vars)))
	}
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil && c.Lifecycle.PreStop.Exec != nil {
		p.preStop = c.Lifecycle.PreStop.Exec.Command // the kubelet does not expand exec commands
	}
	for _, cp := range c.Ports {
		p.ports = append(p.ports, cp.ContainerPort)
		if cp.Name == "http" {
			p.httpPort = cp.ContainerPort
		}
	}
	p.log = filepath.Join(dir, p.name+".log")
	return p
}

// inPod runs argv with the pod's env, in a private mount namespace whose /etc/hosts is the
// test's (the pods' DNS names), and with the image's /wsregistry mapped to bin.
func (p *pod) command(bin, hosts string, argv []string) *exec.Cmd {
	if len(argv) > 0 && argv[0] == "/wsregistry" {
		argv = append([]string{bin}, argv[1:]...)
	}
	script := `mount --bind "$0" /etc/hosts && exec "$@"`
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", script, hosts}, argv...)...)
	cmd.Env = p.env
	cmd.Dir = p.dir
	return cmd
}

// loggableEnv is the pod's env with the Secret's values left out.
func (p *pod) loggableEnv() []string {
	out := make([]string, len(p.env))
	for i, kv := range p.env {
		if k, _, _ := strings.Cut(kv, "="); p.secret[k] {
			kv = k + "=<from the Secret>"
		}
		out[i] = kv
	}
	return out
}

func (p *pod) get(path string) (int, []byte, error) { return p.call(http.MethodGet, path, "") }

// call sends one HTTP request to the pod's HTTP port, with token as Bearer unless empty.
func (p *pod) call(method, path, token string) (int, []byte, error) {
	client := http.Client{Timeout: 2 * time.Second}
	req, err := http.NewRequest(method, fmt.Sprintf("http://%s:%d%s", p.ip, p.httpPort, path), nil)
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var buf strings.Builder
	_, err = bufio.NewReader(resp.Body).WriteTo(&buf)
	return resp.StatusCode, []byte(buf.String()), err
}

func (p *pod) tail() string {
	data, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-15):], "\n")
}

type clusterView struct {
	Node         string `json:"node"`
	Leader       string `json:"leader"`
	Fenced       bool   `json:"fenced"`
	PeerSecurity string `json:"peer_security"`
	Members      []struct {
		ID       string `json:"id"`
		Raft     string `json:"raft"`
		Suffrage string `json:"suffrage"`
	} `json:"members"`
}

// waitFor polls check until it returns nil or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, pods []*pod, check func() error) {
	t.Helper()
	deadline := time.Now().Add(scaled(d))
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			for _, p := range pods {
				t.Logf("--- %s log tail:\n%s", p.name, p.tail())
			}
			t.Fatalf("%s: not within %v: %v", what, scaled(d), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// membership is what oneCluster expects of the raft configuration: exactly these pods as
// members (at their stable DNS names), and as voters exactly voters or, when that is nil,
// any nVoters of them (autopilot picks which non-voter to promote), the rest non-voters.
type membership struct {
	members []*pod
	voters  []*pod
	nVoters int
}

func allVoters(pods []*pod) membership { return membership{members: pods, voters: pods} }

// oneCluster checks that every pod is ready (its readiness probe) and alive (liveness),
// names the same leader, and sees the expected membership.
func oneCluster(pods []*pod, want membership) error {
	leader := ""
	for _, p := range pods {
		for _, path := range []string{"/readyz", "/healthz"} {
			if code, body, err := p.get(path); err != nil || code != http.StatusOK {
				return fmt.Errorf("%s %s: %d %s %v", p.name, path, code, body, err)
			}
		}
		code, body, err := p.get("/v1/cluster")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("%s /v1/cluster: %d %v", p.name, code, err)
		}
		var v clusterView
		if err := json.Unmarshal(body, &v); err != nil {
			return fmt.Errorf("%s /v1/cluster: %v", p.name, err)
		}
		if v.Node != p.name {
			return fmt.Errorf("%s calls itself %q", p.name, v.Node)
		}
		// The Secret's cluster key, not the loopback addresses the test happens to use.
		if v.PeerSecurity != "cluster-key" {
			return fmt.Errorf("%s authenticates peers by %q, want cluster-key", p.name, v.PeerSecurity)
		}
		if v.Leader == "" || (leader != "" && v.Leader != leader) {
			return fmt.Errorf("%s names leader %q, others %q", p.name, v.Leader, leader)
		}
		leader = v.Leader
		var got, exp []string
		voters := 0
		for _, m := range v.Members {
			suffrage := m.Suffrage
			if want.voters == nil && suffrage != "Staging" {
				suffrage = "any"
			}
			got = append(got, m.ID+"@"+m.Raft+"/"+suffrage)
			if m.Suffrage == "Voter" {
				voters++
			}
		}
		for _, w := range want.members {
			// Each pod advertises its stable DNS name, as the StatefulSet tells it to.
			suffrage := "any"
			if want.voters != nil {
				suffrage = "Nonvoter"
				if slices.Contains(want.voters, w) {
					suffrage = "Voter"
				}
			}
			exp = append(exp, w.name+"@"+w.name+".wsregistry-peers:8429/"+suffrage)
		}
		slices.Sort(got)
		if !slices.Equal(got, exp) {
			return fmt.Errorf("%s sees members %v, want %v", p.name, got, exp)
		}
		if want.voters == nil && voters != want.nVoters {
			return fmt.Errorf("%s sees %d voters in %v, want %d", p.name, voters, got, want.nVoters)
		}
	}
	if !slices.ContainsFunc(pods, func(p *pod) bool { return p.name == leader }) {
		return fmt.Errorf("leader %q is not a running pod", leader)
	}
	return nil
}

// portsTaken lists the pods' fixed ports that cannot be bound at their pod IPs now, e.g.
// because a wsregistry started by hand listens on the wildcard address.
func portsTaken(pods []*pod) []string {
	var taken []string
	for _, p := range pods {
		for _, port := range p.ports {
			addr := net.JoinHostPort(p.ip, strconv.Itoa(int(port)))
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				if errors.Is(err, syscall.EADDRINUSE) {
					taken = append(taken, addr)
				} else {
					taken = append(taken, fmt.Sprintf("%s (%v)", addr, err))
				}
				continue
			}
			ln.Close()
		}
	}
	return taken
}

// scaledOut is the replica count the test scales the StatefulSet to: two pods past the
// three that form the cluster, which join as non-voters.
const scaledOut = 5

// TestStatefulSetPodsFormOneCluster starts three wsregistry processes with exactly the
// command, args and env the StatefulSet gives its pods (downward API: POD_NAME
// wsregistry-i, POD_IP 127.0.5.i+1; the Secret wsregistry with random values), each in a
// mount namespace whose /etc/hosts maps the pods' stable DNS names (<pod>.<serviceName>) to
// those addresses, and checks they form one cluster authenticated by the cluster key and
// refuse an admin call without the admin token. Then it does what the StatefulSet
// controller does when the StatefulSet is scaled and updated:
//   - scaled to 5: wsregistry-3 and -4 start the same way and join as non-voters;
//   - a rolling update of a voter: its preStop hook makes it leave and stop by itself,
//     autopilot promotes a non-voter (three voters again), and the pod, started again on its
//     volume, comes back as a non-voter;
//   - scaled back to 3: the preStop hooks of wsregistry-3 and -4 run at once (Parallel pod
//     management), both leave, and the three left are the voters again;
//   - scaled to 5 again: the two pods start on their retained volumes and rejoin as
//     non-voters.
//
// The pods listen on the manifest's fixed ports (8427-8429) at their own addresses: unlike
// the main module's tests this one cannot pick free ports, so it checks they are free first.
func TestStatefulSetPodsFormOneCluster(t *testing.T) {
	need := func(ok bool, why string) {
		t.Helper()
		if ok {
			return
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and %s: nothing may be skipped on CI", why)
		}
		t.Skipf("!!!!!! SKIPPED: %s !!!!!!", why)
	}
	need(runtime.GOOS == "linux", "not Linux (needs mount namespaces)")
	need(os.Geteuid() == 0, "not root (needs unshare --mount and mount --bind)")
	_, err := exec.LookPath("unshare")
	need(err == nil, "unshare (util-linux) is missing")

	m := loadManifests(t)
	sts := m.sts
	dir := t.TempDir()
	sec := newSecrets(t)
	n := int(*sts.Spec.Replicas)
	var pods []*pod
	hosts := "127.0.0.1 localhost\n"
	for i := range max(n, scaledOut) {
		p := podFor(t, sts, i, dir, sec)
		pods = append(pods, p)
		// What the headless Service publishes (publishNotReadyAddresses: from the start).
		hosts += fmt.Sprintf("%s %s.%s %s.%s.default.svc.cluster.local\n", p.ip, p.name, sts.Spec.ServiceName, p.name, sts.Spec.ServiceName)
	}
	if taken := portsTaken(pods); len(taken) > 0 {
		need(false, fmt.Sprintf("the pods' fixed ports are taken: %s cannot be bound. Is a wsregistry running here? `go run ./cmd/wsregistry` listens on :8427-8429 of every address: stop it. If only these addresses are busy, WSREGISTRY_K8S_TEST_PREFIX=127.0.N picks others",
			strings.Join(taken, ", ")))
	}

	bin := filepath.Join(dir, "wsregistry")
	build := exec.Command("go", "build", "-C", "..", "-o", bin, "./cmd/wsregistry")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // the image's static binary, pure-Go resolver
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the binary: %v\n%s", err, out)
	}

	hostsFile := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hostsFile, []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	first, extra := pods[:n], pods[n:]

	for _, p := range first {
		p.start(t, bin, hostsFile)
	}
	t.Logf("env of %s: %v", pods[0].name, pods[0].loggableEnv())

	waitFor(t, 60*time.Second, "three pods form one cluster with a leader", first, func() error { return oneCluster(first, allVoters(first)) })

	// The admin token is in force: without it (or with another) a leave is refused, even
	// from the pod's own host.
	last := first[n-1]
	for _, token := range []string{"", "not-the-admin-token"} {
		code, body, err := last.call(http.MethodPost, "/v1/leave", token)
		if err != nil || code != http.StatusUnauthorized {
			t.Fatalf("POST /v1/leave with token %q: %d %s %v; want 401, the Secret's admin token being required", token, code, body, err)
		}
	}
	if len(last.preStop) == 0 {
		t.Fatal("no preStop exec hook")
	}

	// Scaled out: the new pods, with the same command, join as non-voters.
	for _, p := range extra {
		p.start(t, bin, hostsFile)
	}
	waitFor(t, 60*time.Second, fmt.Sprintf("scaled to %d: %d non-voters join", len(pods), len(extra)), pods, func() error {
		return oneCluster(pods, membership{members: pods, voters: first})
	})

	// A rolling update reaches a voter: the preStop hook (with the Secret's admin token from
	// its env) must make it leave and stop by itself; autopilot then promotes a non-voter.
	preStop(t, bin, hostsFile, last)
	others := slices.DeleteFunc(slices.Clone(pods), func(p *pod) bool { return p == last })
	waitFor(t, 60*time.Second, "a voter left: a non-voter is promoted", others, func() error {
		return oneCluster(others, membership{members: others, nVoters: n})
	})
	t.Logf("%s left: %s", last.name, roles(others[0]))
	last.start(t, bin, hostsFile)
	waitFor(t, 60*time.Second, "the updated pod is back on its volume", pods, func() error {
		return oneCluster(pods, membership{members: pods, nVoters: n})
	})
	t.Logf("%s is back: %s", last.name, roles(others[0]))

	// Scaled back: the controller deletes the extra pods at once; their hooks run together.
	preStop(t, bin, hostsFile, extra...)
	waitFor(t, 60*time.Second, fmt.Sprintf("scaled back to %d: the pods that stay are the voters", n), first, func() error {
		return oneCluster(first, allVoters(first))
	})

	// Scaled out again: the pods start on the volumes the StatefulSet kept and rejoin.
	for _, p := range extra {
		p.start(t, bin, hostsFile)
	}
	waitFor(t, 60*time.Second, fmt.Sprintf("scaled to %d again: the pods rejoin on their volumes", len(pods)), pods, func() error {
		return oneCluster(pods, membership{members: pods, voters: first})
	})
}

// roles describes the configuration as p sees it, for the log.
func roles(p *pod) string {
	_, body, err := p.get("/v1/cluster")
	var v clusterView
	if err == nil {
		err = json.Unmarshal(body, &v)
	}
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, m := range v.Members {
		out = append(out, m.ID+" "+m.Suffrage)
	}
	return strings.Join(out, ", ")
}

// start runs the pod's container command (again, after it stopped: on the same data
// directory, as a pod restarted on its volume), its output appended to its log.
func (p *pod) start(t *testing.T, bin, hosts string) {
	t.Helper()
	logf, err := os.OpenFile(p.log, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	first := p.cmd == nil
	p.cmd = p.command(bin, hosts, p.argv)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan error, 1)
	p.done = done
	go func(cmd *exec.Cmd) { done <- cmd.Wait() }(p.cmd)
	if first {
		t.Logf("%s: %s", p.name, strings.Join(p.argv, " "))
		t.Cleanup(func() { stop(t, p) })
	} else {
		t.Logf("%s: started again on its data", p.name)
	}
}

// preStop runs the preStop hook of the pods at once, as the kubelet does when their pods are
// deleted, and waits until each hook succeeded and each process stopped by itself.
func preStop(t *testing.T, bin, hosts string, pods ...*pod) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scaled(40*time.Second))
	defer cancel()
	errs := make(chan error, len(pods))
	for _, p := range pods {
		hook := p.command(bin, hosts, p.preStop)
		hookCmd := exec.CommandContext(ctx, hook.Path, hook.Args[1:]...)
		hookCmd.Env, hookCmd.Dir = hook.Env, hook.Dir
		go func() {
			if out, err := hookCmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("%s: preStop %v: %v\n%s", p.name, p.preStop, err, out)
				return
			}
			errs <- nil
		}()
	}
	for range pods {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range pods {
		select {
		case err := <-p.done:
			p.done <- err
			if err != nil {
				t.Errorf("%s exited with %v after leaving", p.name, err)
			}
		case <-time.After(scaled(30 * time.Second)):
			t.Fatalf("%s still runs %v after its preStop leave", p.name, scaled(30*time.Second))
		}
	}
}

// stop interrupts a pod's process (SIGINT: stop without leaving) and kills it if it hangs.
func stop(t *testing.T, p *pod) {
	select {
	case err := <-p.done:
		p.done <- err
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		t.Logf("%s did not stop on SIGINT; killing it", p.name)
		p.cmd.Process.Kill()
		<-p.done
	}
}
