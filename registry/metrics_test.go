package registry

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, n *Node) string {
	t.Helper()
	resp, err := http.Get("http://" + n.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, b)
	}
	return string(b)
}

func TestMetrics_CountWhatHappensWithoutUnboundedLabels(t *testing.T) {
	n := startNode(t, t.TempDir())
	a := dialRaw(t, n, "/10.9.8.7/9001")
	a.call(online(0, "secret-namespace-name"), ok(0))
	a.call(where(1, "secret-namespace-name"), found(1, "10.9.8.7:9001"))
	a.sendText(`{"id":2,"twoway":true,"data":{"cmd":"online","props":[5],"protocol":"ws"},"mode":0}`)
	a.next()
	a.sendText(`{"id":3,"twoway":true,"data":{"cmd":"nosuch","props":[],"protocol":"ws"},"mode":0}`)
	a.next()
	a.sendText(`not json`)
	a.call(where(4, "x"), ok(4))

	out := scrape(t, n)
	for _, want := range []string{
		`wsregistry_registrations 1`,
		`wsregistry_namespaces 1`,
		`wsregistry_agent_connections 1`,
		`wsregistry_ws_requests_total{cmd="online",protocol="ws",status="200"} 1`,
		`wsregistry_ws_requests_total{cmd="online",protocol="ws",status="400"} 1`,
		`wsregistry_ws_requests_total{cmd="where",protocol="ws",status="200"} 2`,
		`wsregistry_ws_requests_total{cmd="other",protocol="ws",status="104"} 1`,
		`wsregistry_ws_ignored_messages_total 1`,
		`wsregistry_where_duration_seconds_count 2`,
		`wsregistry_raft_state{state="leader"} 1`,
		`wsregistry_fenced 0`,
		`wsregistry_ready 1`,
		`wsregistry_writes_total{path="local",result="ok"}`,
		`wsregistry_group_commit_batch_size_count`,
		`go_goroutines`,
		`process_resident_memory_bytes`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// Names and labels only: a sample's value may well contain the digits 9001.
	var namesAndLabels strings.Builder
	for line := range strings.Lines(out) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			namesAndLabels.WriteString(line[:i+1])
		} else if name, _, ok := strings.Cut(line, " "); ok {
			namesAndLabels.WriteString(name)
		}
		namesAndLabels.WriteByte('\n')
	}
	for _, secret := range []string{"secret-namespace-name", "10.9.8.7", "9001", "n1/"} {
		if strings.Contains(namesAndLabels.String(), secret) {
			t.Errorf("metrics carry %q: namespaces, hosts and sessions are unbounded labels", secret)
		}
	}
}

func TestMetrics_PromtoolAcceptsALiveNodesOutput(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool missing on CI: scripts/test.sh installs Debian's prometheus package")
		}
		t.Skip("!!! promtool not installed (apt-get install prometheus): skipping the metrics lint !!!")
	}
	n := startNode(t, t.TempDir())
	a := dialRaw(t, n, "/127.0.0.1/9001")
	a.call(online(0, "svc"), ok(0))
	eventually(t, 5*time.Second, func() bool { return strings.Contains(scrape(t, n), "wsregistry_registrations 1") }, "registration not in metrics")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(scrape(t, n))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("promtool check metrics: %v\n%s", err, out.String())
	}
}
