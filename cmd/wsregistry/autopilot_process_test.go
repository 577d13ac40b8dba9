package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/wsregistry/wsregistry/fsm"
)

// apView is the part of GET /v1/cluster these tests read.
type apView struct {
	Node    string `json:"node"`
	Leader  string `json:"leader"`
	Members []struct {
		ID       string `json:"id"`
		Suffrage string `json:"suffrage"`
		Role     string `json:"role"`
		Leader   bool   `json:"leader"`
		Health   *struct {
			LastContactAgeMS int64  `json:"last_contact_age_ms"`
			Lag              uint64 `json:"lag"`
			Healthy          bool   `json:"healthy"`
			HealthyForMS     int64  `json:"healthy_for_ms"`
		} `json:"health"`
	} `json:"members"`
	Autopilot *struct {
		TargetVoters int `json:"target_voters"`
		Recent       []struct {
			Action string `json:"action"`
			Member string `json:"member"`
			Reason string `json:"reason"`
			Error  string `json:"error"`
		} `json:"recent"`
		Counts map[string]uint64 `json:"counts"`
	} `json:"autopilot"`
}

// roles maps member id to role ("voter", "nonvoter").
func (v apView) roles() map[string]string {
	out := map[string]string{}
	for _, m := range v.Members {
		out[m.ID] = m.Role
	}
	return out
}

func (v apView) count(role string) int {
	n := 0
	for _, m := range v.Members {
		if m.Role == role {
			n++
		}
	}
	return n
}

// leaderView is /v1/cluster from a live process that leads, or false when none does now.
func leaderView(procs []*proc) (apView, *proc, bool) {
	for _, p := range procs {
		if p.exited() {
			continue
		}
		var v apView
		if p.getJSON("/v1/cluster", &v) == http.StatusOK && v.Leader != "" && v.Leader == v.Node {
			return v, p, true
		}
	}
	return apView{}, nil, false
}

// metricLine is the line of p's /metrics that starts with series ("" when absent).
func (p *proc) metricLine(series string) string {
	resp, err := procHTTP.Get("http://" + p.http + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, series+" ") {
			return line
		}
	}
	return ""
}

// Five processes keep three voters: a voter killed with SIGKILL is removed and a non-voter
// promoted within dead-server-timeout + stabilization-time, the cluster then survives a
// second voter's loss (the leader's), and the removed node, started again, comes back as a
// non-voter.
func TestProcess_AutopilotReplacesKilledVotersWithNonvoters(t *testing.T) {
	const dead, stable = 3 * time.Second, 2 * time.Second
	// Removal comes within a probe period (grace/10) of the deadline, the promotion one
	// autopilot step later; the rest is scheduling on a loaded machine.
	const margin = 1500 * time.Millisecond
	procs := procCluster(t, 5, "2s", "--voters", "3",
		"--dead-server-timeout", dead.String(), "--stabilization-time", stable.String())
	byID := map[string]*proc{}
	for i, p := range procs {
		byID[fmt.Sprintf("node%d", i)] = p
	}

	// 3 voters and 2 non-voters, every member probed healthy by the leader.
	var v apView
	var leader *proc
	eventually(t, 20*time.Second, func() bool {
		var ok bool
		if v, leader, ok = leaderView(procs); !ok || len(v.Members) != 5 || v.count("voter") != 3 || v.count("nonvoter") != 2 {
			return false
		}
		for _, m := range v.Members {
			if m.Health == nil || !m.Health.Healthy {
				return false
			}
		}
		return true
	}, "no leader showing 3 healthy voters and 2 healthy non-voters: %+v", &v)
	for _, m := range v.Members {
		if want := strings.ToLower(m.Suffrage); m.Role != want {
			t.Fatalf("member %s: role %q, suffrage %q", m.ID, m.Role, m.Suffrage)
		}
	}
	if v.Autopilot == nil || v.Autopilot.TargetVoters != 3 {
		t.Fatalf("autopilot view: %+v", &v)
	}
	if line := leader.metricLine(`wsregistry_autopilot_actions_total{action="promoted"}`); !strings.HasSuffix(line, " 0") {
		t.Fatalf("promotions before any fault: %q, want a zero series", line)
	}
	if code, out, errOut := runCLI("members", "--addr", leader.http); code != 0 || !strings.Contains(out, "nonvoter") || !strings.Contains(out, "healthy") {
		t.Fatalf("members: exit %d, stdout:\n%s\nstderr: %s", code, out, errOut)
	}

	// A voter that does not lead is killed: it is replaced by a non-voter.
	var victim string
	for _, m := range v.Members {
		if m.Role == "voter" && !m.Leader {
			victim = m.ID
			break
		}
	}
	vp := byID[victim]
	before := v.roles()
	start := time.Now()
	vp.cmd.Process.Signal(syscall.SIGKILL)
	<-vp.done
	var promoted string
	eventually(t, 30*time.Second, func() bool {
		var ok bool
		if v, leader, ok = leaderView(procs); !ok {
			return false
		}
		r := v.roles()
		if _, member := r[victim]; member || v.count("voter") != 3 {
			return false
		}
		for id, role := range r {
			if role == "voter" && before[id] == "nonvoter" {
				promoted = id
			}
		}
		return promoted != ""
	}, "killed voter %s never replaced: %+v", victim, &v)
	took := time.Since(start)
	t.Logf("voter %s killed: removed and %s promoted %v later (dead-server-timeout %v, stabilization-time %v)", victim, promoted, took.Round(time.Millisecond), dead, stable)
	if took > scaled(dead+stable+margin) {
		t.Fatalf("replacement took %v, want within %v + %v + %v", took, dead, stable, margin)
	}
	if took < dead-dead/5 {
		t.Fatalf("voter removed %v after its kill, before the dead-server timeout %v", took, dead)
	}
	// The leader recorded, logged and counted both actions.
	eventually(t, 5*time.Second, func() bool {
		v, leader, _ = leaderView(procs)
		if v.Autopilot == nil {
			return false
		}
		var removed, prom bool
		for _, a := range v.Autopilot.Recent {
			removed = removed || (a.Action == "removed" && a.Member == victim && a.Reason != "" && a.Error == "")
			prom = prom || (a.Action == "promoted" && a.Error == "")
		}
		return removed && prom
	}, "autopilot actions not listed in /v1/cluster: %+v", &v)
	for action, want := range map[string]string{"removed": " 1", "promoted": " 1"} {
		if line := leader.metricLine(`wsregistry_autopilot_actions_total{action="` + action + `"}`); !strings.HasSuffix(line, want) {
			t.Fatalf("metric for %s: %q, want%s", action, line, want)
		}
	}
	if log := leader.log.String(); !strings.Contains(log, "autopilot: membership changed") || !strings.Contains(log, "member="+victim) {
		t.Fatalf("the leader did not log the removal of %s", victim)
	}

	// The removed node starts again on its data: it comes back as a non-voter (the voters
	// are at the target).
	addrs := nodeAddrs{ws: vp.ws, http: vp.http, raft: vp.raft}
	back := startProc(t, vp.cmd.Dir, addrs, nil, vp.cmd.Args[1:]...)
	if err := back.waitListening(20 * time.Second); err != nil {
		t.Fatalf("restart of %s on its addresses %v: %v", victim, addrs, err)
	}
	byID[victim] = back
	procs = append(procs, back)
	eventually(t, 30*time.Second, func() bool {
		var ok bool
		v, leader, ok = leaderView(procs)
		return ok && v.roles()[victim] == "nonvoter" && v.count("voter") == 3
	}, "restarted %s never came back as a non-voter: %+v", victim, &v)
	back.waitReady(20 * time.Second)
	how := "its own join"
	if strings.Contains(leader.log.String(), "action=rejoined") {
		how = "autopilot's rejoin"
	}
	t.Logf("restarted %s is a non-voter again, through %s", victim, how)

	// A second voter lost, the leader this time: two of three voters remain, a new leader
	// is elected, and writes still commit and replicate.
	old := leader
	oldID := v.Leader
	start = time.Now()
	old.cmd.Process.Signal(syscall.SIGKILL)
	<-old.done
	eventually(t, 20*time.Second, func() bool {
		var ok bool
		v, leader, ok = leaderView(procs)
		return ok && v.Leader != oldID
	}, "no new leader after the leader %s was killed", oldID)
	t.Logf("leader %s killed: %s leads %v later", oldID, v.Leader, time.Since(start).Round(time.Millisecond))
	var through, other *proc
	for _, p := range procs {
		if p.exited() {
			continue
		}
		if through == nil {
			through = p
		} else if other == nil && p != through {
			other = p
		}
	}
	dialAgent(t, through.ws, "127.255.0.5:9005").online("svc-after-two-losses")
	eventually(t, 10*time.Second, func() bool { return other.where("svc-after-two-losses") == "127.255.0.5:9005" },
		"a write through %s after two voters were lost is not visible on %s", through.http, other.http)
	// Autopilot restores three voters from the remaining non-voters.
	eventually(t, 30*time.Second, func() bool {
		var ok bool
		v, leader, ok = leaderView(procs)
		_, member := v.roles()[oldID]
		return ok && !member && v.count("voter") == 3
	}, "the killed leader %s was never replaced: %+v", oldID, &v)
	t.Logf("leader %s killed: replaced %v later", oldID, time.Since(start).Round(time.Millisecond))
}

// A voter cut off from the others (not restarted) is removed and replaced; once it is
// reachable again the leader adds it back as a non-voter, and it serves agents again.
func TestProcess_AutopilotAddsBackARemovedVoterThatAnswersAgain(t *testing.T) {
	procs := procCluster(t, 4, "2s", "--voters", "3", "--fault-injection",
		"--dead-server-timeout", "2s", "--stabilization-time", "1s")
	var v apView
	var leader *proc
	eventually(t, 20*time.Second, func() bool {
		var ok bool
		v, leader, ok = leaderView(procs)
		return ok && v.count("voter") == 3 && v.count("nonvoter") == 1
	}, "no leader showing 3 voters and 1 non-voter: %+v", &v)
	var victim string
	for _, m := range v.Members {
		if m.Role == "voter" && !m.Leader {
			victim = m.ID
			break
		}
	}
	var vp *proc
	for i, p := range procs {
		if fmt.Sprintf("node%d", i) == victim {
			vp = p
		}
	}
	if code := vp.post("/v1/debug/partition?on=true"); code != http.StatusOK {
		t.Fatalf("partition: %d", code)
	}
	eventually(t, 30*time.Second, func() bool {
		var ok bool
		v, leader, ok = leaderView(procs)
		_, member := v.roles()[victim]
		return ok && !member && v.count("voter") == 3
	}, "cut-off voter %s never replaced: %+v", victim, &v)

	if code := vp.post("/v1/debug/partition?on=false"); code != http.StatusOK {
		t.Fatalf("heal: %d", code)
	}
	// The leader that removed it adds it back when it answers again, or the node, finding
	// itself outside the configuration, asks to be added back: whichever comes first. The
	// configuration shows it a moment before either records it.
	how := ""
	eventually(t, 30*time.Second, func() bool {
		var ok bool
		if v, leader, ok = leaderView(procs); !ok || v.roles()[victim] != "nonvoter" || v.count("voter") != 3 || v.Autopilot == nil {
			return false
		}
		for _, a := range v.Autopilot.Recent {
			if a.Action == "rejoined" && a.Member == victim && a.Error == "" {
				how = "the leader's autopilot"
				return true
			}
		}
		if strings.Contains(vp.log.String(), "removed from the cluster while cut off: added back") {
			how = "its own request"
			return true
		}
		return false
	}, "healed %s never added back as a non-voter: %+v", victim, &v)
	t.Logf("healed %s added back as a non-voter by %s", victim, how)
	if how == "the leader's autopilot" {
		if line := leader.metricLine(`wsregistry_autopilot_actions_total{action="rejoined"}`); !strings.HasSuffix(line, " 1") {
			t.Fatalf("rejoin metric: %q", line)
		}
	}
	// It serves agents again. Until it has applied its own purge (the leader forgot it when
	// it was removed) and started a new incarnation, an online through it may be refused
	// (410, its session is purged): the agent connects again, as iocore agents do.
	vp.waitReady(30 * time.Second)
	attempts := 0
	eventually(t, 20*time.Second, func() bool {
		attempts++
		c, ok := tryOnline(vp.ws, "127.255.0.6", "9006", "svc-on-rejoined")
		if ok {
			t.Cleanup(func() { c.CloseNow() })
		}
		return ok
	}, "no online through the rejoined %s succeeded", victim)
	if attempts > 1 {
		t.Logf("online through the rejoined %s succeeded at attempt %d", victim, attempts)
	}
	eventually(t, 10*time.Second, func() bool { return leader.where("svc-on-rejoined") == "127.255.0.6:9006" },
		"a registration through the rejoined %s is not visible on the leader", victim)
}

// tryOnline connects an agent at host:port to the node at wsAddr and registers it as ns,
// without failing the test: a node that fences meanwhile refuses or closes it. On success
// the connection stays open (the registration lives as long as it does).
func tryOnline(wsAddr, host, port, ns string) (*websocket.Conn, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), scaled(5*time.Second))
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws://"+wsAddr+"/"+host+"/"+port, nil)
	if err != nil {
		return nil, false
	}
	msg := fmt.Sprintf(`{"id":0,"twoway":true,"data":{"cmd":"online","props":[%q],"protocol":"ws"},"mode":0}`, ns)
	if err := c.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		c.CloseNow()
		return nil, false
	}
	_, b, err := c.Read(ctx)
	if err != nil || !strings.Contains(string(b), `"data":{"status":200}`) {
		c.CloseNow()
		return nil, false
	}
	return c, true
}

// A voter that stalls (SIGSTOP) is removed by autopilot, but its live agents, which cannot
// know, stay findable: removing it from the configuration must not skip the check of its
// agents that a silent member's purge makes (they are held by the cluster).
func TestProcess_AutopilotRemovalKeepsAStalledVotersLiveAgents(t *testing.T) {
	// Removed as its grace ends (the defaults are equal: the agent check is under way), or
	// before (nothing has checked its agents yet).
	t.Run("at-the-grace", func(t *testing.T) { testRemovalKeepsLiveAgents(t, "2s", "2s") })
	t.Run("before-the-grace", func(t *testing.T) { testRemovalKeepsLiveAgents(t, "4s", "2s") })
}

func testRemovalKeepsLiveAgents(t *testing.T, grace, dead string) {
	procs := procCluster(t, 5, grace, "--voters", "3",
		"--dead-server-timeout", dead, "--stabilization-time", "1s")
	var v apView
	eventually(t, 20*time.Second, func() bool {
		var ok bool
		v, _, ok = leaderView(procs)
		return ok && v.count("voter") == 3 && v.count("nonvoter") == 2
	}, "no leader showing 3 voters and 2 non-voters: %+v", &v)
	var victim string
	for _, m := range v.Members {
		if m.Role == "voter" && !m.Leader {
			victim = m.ID
			break
		}
	}
	var vp *proc
	for i, p := range procs {
		if fmt.Sprintf("node%d", i) == victim {
			vp = p
		}
	}
	sdkAgent(t, "svc-on-stalled", vp.ws)
	eventually(t, 10*time.Second, func() bool {
		_, l, ok := leaderView(procs)
		return ok && l.where("svc-on-stalled") != ""
	}, "registration not replicated to the leader")

	vp.cmd.Process.Signal(syscall.SIGSTOP)
	t.Cleanup(func() { vp.cmd.Process.Signal(syscall.SIGCONT) })
	live := procs[:0:0]
	for _, p := range procs {
		if p != vp {
			live = append(live, p)
		}
	}
	var leader *proc
	eventually(t, 30*time.Second, func() bool {
		var ok bool
		v, leader, ok = leaderView(live)
		_, member := v.roles()[victim]
		return ok && !member && v.count("voter") == 3
	}, "stalled voter %s never replaced: %+v", victim, &v)
	// The agent answers the leader's check: it stays registered, held by the cluster, and
	// is never missing meanwhile.
	eventually(t, 15*time.Second, func() bool {
		var out struct {
			Instances []struct{ Host, Node string }
		}
		code := leader.getJSON("/v1/namespaces/svc-on-stalled", &out)
		if code == http.StatusNotFound {
			t.Fatalf("the live agent of the stalled voter %s vanished after its removal", victim)
		}
		return code == http.StatusOK && len(out.Instances) == 1 && out.Instances[0].Node == fsm.ClusterOwner
	}, "the live agent of the stalled voter %s is not held by the cluster", victim)
}
