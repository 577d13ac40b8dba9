package registry

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/internal/version"
	"github.com/wsregistry/wsregistry/watch"
)

// sseEvent is one Server-Sent Event (comments are skipped).
type sseEvent struct{ id, name, data string }

// watchStream follows GET /v1/watch on one node.
func watchStream(t *testing.T, n *Node, query string) <-chan sseEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.HTTPAddr()+"/v1/watch"+query, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("GET /v1/watch: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := make(chan sseEvent, 1024)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 16<<20)
		var ev sseEvent
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			v = strings.TrimPrefix(v, " ")
			switch k {
			case "":
				if ev.name != "" {
					out <- ev
				}
				ev = sseEvent{}
			case "id":
				ev.id = v
			case "event":
				ev.name = v
			case "data":
				ev.data += v
			}
		}
	}()
	return out
}

// nextEvent waits for an event satisfying match, skipping others.
func nextEvent(t *testing.T, ch <-chan sseEvent, what string, match func(sseEvent) bool) sseEvent {
	t.Helper()
	deadline := time.After(scaled(10 * time.Second))
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("stream ended waiting for %s", what)
			}
			if match(ev) {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %s within 10s", what)
		}
	}
}

func changeIn(kind, ns string) func(sseEvent) bool {
	return func(ev sseEvent) bool {
		if ev.name != watch.EventChanges {
			return false
		}
		var c watch.ChangesEvent
		if json.Unmarshal([]byte(ev.data), &c) != nil {
			return false
		}
		for _, ch := range c.Changes {
			if ch.Kind == kind && ch.Namespace == ns {
				return true
			}
		}
		return false
	}
}

func TestWatch_FollowerStreamsRegistrationsAndLeaderChanges(t *testing.T) {
	tc := startCluster(t, 3, 2*time.Second)
	leader := tc.leader()
	f := tc.followers()[0]
	s := watchStream(t, f, "")

	var st watch.StateEvent
	if err := json.Unmarshal([]byte(nextEvent(t, s, "state", func(ev sseEvent) bool { return ev.name == watch.EventState }).data), &st); err != nil {
		t.Fatal(err)
	}
	var cv watchCluster
	if err := json.Unmarshal(st.Cluster, &cv); err != nil || cv.Node != f.cfg.NodeID || cv.Leader != leader.cfg.NodeID || len(cv.Members) != 3 {
		t.Fatalf("state's cluster view from %s: %s (%v)", f.cfg.NodeID, st.Cluster, err)
	}

	// An agent registers on the leader; the follower's stream shows it, with its raft index.
	a := dialRaw(t, leader, "/127.0.0.1/9311")
	a.call(online(0, "watched"), ok(0))
	ev := nextEvent(t, s, "register of watched", changeIn("register", "watched"))
	var ce watch.ChangesEvent
	json.Unmarshal([]byte(ev.data), &ce)
	if ce.Index <= st.Index || ev.id != strconv.FormatUint(ce.Index, 10) {
		t.Fatalf("changes event %s (id %q) after state index %d", ev.data, ev.id, st.Index)
	}
	c := ce.Changes[len(ce.Changes)-1]
	if c.Host != "127.0.0.1:9311" || c.Node != leader.cfg.NodeID || c.Since == nil || c.Index == 0 {
		t.Fatalf("register change %+v", c)
	}

	// A resumed stream on ANOTHER node picks up from the same raft index.
	other := tc.followers()[1]
	r := watchStream(t, other, "?index="+ev.id)

	a.conn.Close(websocket.StatusNormalClosure, "bye")
	nextEvent(t, s, "deregister of watched", changeIn("deregister", "watched"))
	nextEvent(t, r, "deregister of watched on the resumed stream", changeIn("deregister", "watched"))

	// A leader change is a cluster event.
	if err := leader.raft.TransferLeadership(); err != nil {
		t.Fatalf("leadership transfer: %v", err)
	}
	nextEvent(t, s, "cluster event with a new leader", func(ev sseEvent) bool {
		if ev.name != watch.EventCluster {
			return false
		}
		var e struct{ Cluster watchCluster }
		json.Unmarshal([]byte(ev.data), &e)
		return e.Cluster.Leader != "" && e.Cluster.Leader != leader.cfg.NodeID
	})
}

// artifactsDir is where tests leave files for people to look at (screenshots).
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("WSREGISTRY_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "test-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser starts headless Chromium, or skips loudly (fails on CI) when there is none.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil || os.Getenv("WSREGISTRY_SKIP_BROWSER") != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("chromium is required on CI (apt-get install chromium): %v", err)
		}
		t.Skip("!!!!!! SKIPPING the dashboard browser test: no chromium (apt-get install chromium) !!!!!!")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // containers and CI run as root, where Chromium's sandbox refuses to start
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-gpu", true),
	)
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancel(); acancel() })
	// The first Run starts the browser and must not carry a timeout (it would end the browser).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// do runs browser steps with a deadline.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, scaled(15*time.Second))
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("browser: %s: %v", what, err)
	}
}

func TestDashboard_LiveOnAFollowerWithoutReload(t *testing.T) {
	ctx := browser(t)
	tc := startCluster(t, 3, 2*time.Second)
	leader := tc.leader()
	f := tc.followers()[0]
	url := "http://" + f.HTTPAddr() + "/"

	do(t, ctx, "open the dashboard on follower "+f.cfg.NodeID,
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.CSS(`#conn[data-state="live"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-member="`+leader.cfg.NodeID+`"][data-role="leader"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-member="`+f.cfg.NodeID+`"][data-role="follower"][data-suffrage="voter"]`)),
		// Marks this page load: if the page reloaded, the mark would be gone.
		chromedp.Evaluate[chromedp.Void](`window.__loadMark = "first-load"`),
	)
	// The test cluster authenticates its peers with a cluster key, and the page says so.
	if sec, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("peer-security").textContent`)); err != nil || sec != "cluster key" {
		t.Fatalf("peer security shown as %q (%v), want \"cluster key\"", sec, err)
	}

	// Agents register through every node, the first one through the leader.
	agents := []struct {
		node      *Node
		host, ns  string
		keepAlive bool
	}{
		{leader, "/127.0.0.1/9401", "dashboard-demo", false},
		{tc.nodes[0], "/127.0.0.1/9402", "user-service", true},
		{tc.nodes[1], "/127.0.0.1/9403", "user-service", true},
		{tc.nodes[2], "/127.0.0.1/9404", "billing", true},
	}
	var first *rawAgent
	for i, ag := range agents {
		a := dialRaw(t, ag.node, ag.host)
		a.call(online(0, ag.ns), ok(0))
		if i == 0 {
			first = a
		}
	}
	demo := `tr[data-ns="dashboard-demo"][data-host="127.0.0.1:9401"]`
	do(t, ctx, "see the new agents appear",
		chromedp.WaitVisible(chromedp.CSS(demo)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-ns="billing"][data-host="127.0.0.1:9404"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-ns="user-service"][data-host="127.0.0.1:9403"]`)),
	)
	mark, err := chromedp.Run(ctx, chromedp.Evaluate[string](`window.__loadMark`))
	if err != nil || mark != "first-load" {
		t.Fatalf("the page reloaded (mark %q, %v)", mark, err)
	}
	// Let the "last contact" poll fill in before the picture.
	do(t, ctx, "wait for last contact", chromedp.WaitVisible(chromedp.CSS(`#members td.contact-ok`)))
	// Every member's version, its agents against the fair share, and this node's pace.
	for _, n := range tc.nodes {
		do(t, ctx, "see "+n.cfg.NodeID+"'s version and agents",
			chromedp.WaitVisible(chromedp.CSS(`tr[data-member="`+n.cfg.NodeID+`"] td.version[data-version]`)),
			chromedp.WaitReady(chromedp.CSS(`#balance rect[data-member="`+n.cfg.NodeID+`"][data-agents]`)),
		)
	}
	do(t, ctx, "see the fair-share line and the pace charts",
		// Four agents over three members.
		chromedp.WaitReady(chromedp.CSS(`#balance line.fair[data-fair="1.3"]`)),
		chromedp.WaitReady(chromedp.CSS(`#spark-registrations polyline`)),
		chromedp.WaitReady(chromedp.CSS(`#spark-lookups polyline`)),
		chromedp.WaitReady(chromedp.CSS(`#spark-fetches polyline`)),
	)
	if v, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("td.version").dataset.version`)); err != nil || v != version.String() {
		t.Fatalf("version shown %q (%v), want %q", v, err, version.String())
	}

	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	png := filepath.Join(artifactsDir(t), "dashboard-follower.png")
	if err := os.WriteFile(png, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the dashboard on follower %s: %s", f.cfg.NodeID, png)

	// The filter box narrows the list.
	do(t, ctx, "filter",
		chromedp.SendKeys(chromedp.CSS(`#filter`), "billing"),
		chromedp.WaitNotPresent(chromedp.CSS(`div.ns[data-ns="user-service"]`)),
		chromedp.WaitVisible(chromedp.CSS(`div.ns[data-ns="billing"]`)),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("filter").value = ""; document.getElementById("filter").dispatchEvent(new Event("input"))`),
		chromedp.WaitVisible(chromedp.CSS(demo)),
	)

	// The agent disconnects: it vanishes, still without a reload.
	first.conn.Close(websocket.StatusNormalClosure, "bye")
	do(t, ctx, "see the agent vanish",
		chromedp.WaitNotPresent(chromedp.CSS(demo)),
		chromedp.WaitNotPresent(chromedp.CSS(`div.ns[data-ns="dashboard-demo"]`)),
	)
	mark, err = chromedp.Run(ctx, chromedp.Evaluate[string](`window.__loadMark`))
	if err != nil || mark != "first-load" {
		t.Fatalf("the page reloaded (mark %q, %v)", mark, err)
	}
	if n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("tr[data-ns]").length`)); err != nil || n != 3 {
		t.Fatalf("%d instance rows left, want 3 (%v)", n, err)
	}
	fmt.Fprintln(os.Stderr) // keep go test -v output readable after chromium's logs
}

// A member that does not vote shows as a non-voter, on its own page and on the leader's,
// where the leader's probe of it (healthy) is on its last-contact cell.
func TestDashboard_ShowsNonvotersAndTheLeadersProbe(t *testing.T) {
	ctx := browser(t)
	tc := startCluster(t, 2, 2*time.Second, func(c *Config) { c.Cluster.Voters = 1 })
	leader := tc.leader()
	nv := tc.followers()[0]
	row := `tr[data-member="` + nv.cfg.NodeID + `"][data-role="non-voter"][data-suffrage="nonvoter"]`
	do(t, ctx, "open the dashboard on non-voter "+nv.cfg.NodeID,
		chromedp.Navigate("http://"+nv.HTTPAddr()+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#conn[data-state="live"]`)),
		chromedp.WaitVisible(chromedp.CSS(row)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-member="`+leader.cfg.NodeID+`"][data-role="leader"][data-suffrage="voter"]`)),
	)
	do(t, ctx, "open the dashboard on the leader "+leader.cfg.NodeID,
		chromedp.Navigate("http://"+leader.HTTPAddr()+"/"),
		chromedp.WaitVisible(chromedp.CSS(`#conn[data-state="live"]`)),
		chromedp.WaitVisible(chromedp.CSS(row+` td[data-healthy="true"]`)),
	)
	fmt.Fprintln(os.Stderr)
}
