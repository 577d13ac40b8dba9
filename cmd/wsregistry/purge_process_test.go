package main

import (
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// procCluster starts n node processes on one random loopback /24 that form one cluster
// (--bootstrap-expect n), with short raft timeouts, the given grace and extra flags.
func procCluster(t *testing.T, n int, grace string, extra ...string) []*proc {
	t.Helper()
	_, ips := loopbackIPs(n)
	procs := startNodes(t, ips, func(i int, all []nodeAddrs) (string, []string, []string) {
		return t.TempDir(), nil, append([]string{
			"--node-id", fmt.Sprintf("node%d", i), "--data-dir", "d",
			"--bootstrap-expect", fmt.Sprint(n), "--join", peerAddrs(all), "--node-grace", grace,
			"--raft-heartbeat-timeout", "200ms", "--raft-election-timeout", "200ms", "--raft-leader-lease-timeout", "100ms",
			"--raft-no-sync", "--log-level", "debug"}, extra...)
	})
	for _, p := range procs {
		p.waitReady(30 * time.Second)
	}
	return procs
}

// post sends an admin call from loopback (no token configured: loopback may).
func (p *proc) post(path string) int {
	p.t.Helper()
	resp, err := http.Post("http://"+p.http+path, "", nil)
	if err != nil {
		p.t.Fatalf("POST %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// A silent member's sessions are purged within grace + 1 s of its last contact whatever
// made it silent. raft alone noticed a paused process only after its transport's I/O
// timeout, and a member whose disk hangs never; the leader's probes see all four.
func TestProcess_SilentMemberPurgedWithinGraceWhateverTheFault(t *testing.T) {
	const grace = 2 * time.Second
	faults := []struct {
		name   string
		inject func(t *testing.T, victim, leader *proc)
	}{
		{"sigkill", func(t *testing.T, victim, _ *proc) { victim.cmd.Process.Signal(syscall.SIGKILL) }},
		{"sigstop", func(t *testing.T, victim, _ *proc) {
			victim.cmd.Process.Signal(syscall.SIGSTOP)
			t.Cleanup(func() { victim.cmd.Process.Signal(syscall.SIGCONT) })
		}},
		{"partition", func(t *testing.T, victim, _ *proc) {
			if code := victim.post("/v1/debug/partition?on=true"); code != http.StatusOK {
				t.Fatalf("partition: %d", code)
			}
		}},
		{"blocked-disk", func(t *testing.T, victim, leader *proc) {
			if code := victim.post("/v1/debug/disk?blocked=true"); code != http.StatusOK {
				t.Fatalf("block disk: %d", code)
			}
			// raft answers heartbeats without the disk: only a write shows the member
			// falling behind. The other two still commit it.
			dialAgent(t, leader.ws, "127.255.0.9:9009").online("svc-after-block")
		}},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			procs := procCluster(t, 3, grace.String(), "--fault-injection")
			li := leaderOf(t, procs)
			victim := procs[(li+1)%3]
			leader := procs[li]
			dialAgent(t, victim.ws, "127.255.0.1:9001").online("svc-victim")
			eventually(t, 5*time.Second, func() bool { return leader.where("svc-victim") != "" }, "registration not replicated to the leader")

			start := time.Now() // the victim's last contact is at most this
			term := leaderTerm(t, procs, victim)
			f.inject(t, victim, leader)
			// A leader elected during the fault (one that lost the quorum's contact on a loaded
			// machine steps down) knows nothing of the victim's last contact and counts the grace
			// from its own election: the bound then runs from when the new term was seen.
			counted := start
			eventually(t, 30*time.Second, func() bool {
				if now := leaderTerm(t, procs, victim); now != 0 && now != term {
					term, counted = now, time.Now()
				}
				return leader.where("svc-victim") == ""
			}, "the silent member's agent was never purged")
			took := time.Since(start)
			t.Logf("%s: purged %v after the fault (grace %v)", f.name, took.Round(time.Millisecond), grace)
			if counted != start {
				t.Logf("%s: a new leader (term %d) was seen %v after the fault", f.name, term, counted.Sub(start).Round(time.Millisecond))
			}
			if since := time.Since(counted); since > scaled(grace+time.Second) {
				t.Fatalf("%s: purged %v after the fault or the last election, want within grace %v + 1s", f.name, since, grace)
			}
			// The grace is what decides: contact is credited at most one probe period
			// (grace/10) before the fault.
			if took < grace-grace/5 {
				t.Fatalf("%s: purged %v after the fault, before the grace %v", f.name, took, grace)
			}
			if li2 := leaderOf(t, procs); procs[li2] != leader {
				t.Logf("leadership moved during the fault (to %s)", procs[li2].http)
			}
		})
	}
}

// leaderTerm is the term of the leader as the first process other than skip that reports
// itself leader sees it; 0 while none does.
func leaderTerm(t *testing.T, procs []*proc, skip *proc) uint64 {
	t.Helper()
	for _, p := range procs {
		if p == skip || p.exited() {
			continue
		}
		var v struct {
			Node   string `json:"node"`
			Leader string `json:"leader"`
			Term   uint64 `json:"term"`
		}
		if p.getJSON("/v1/cluster", &v) == 200 && v.Leader != "" && v.Leader == v.Node {
			return v.Term
		}
	}
	return 0
}
