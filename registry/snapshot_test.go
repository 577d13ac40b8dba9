package registry

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func TestSnapshot_SaveAndRestoreThenReconcileWithLiveAgents(t *testing.T) {
	tc := startCluster(t, 3, 2*time.Second)
	f := tc.followers()[0]
	gone := dialRaw(t, f, "/127.0.0.1/9501")
	gone.call(online(0, "in-snapshot-gone-later"), ok(0))
	stays := dialRaw(t, f, "/127.0.0.1/9502")
	stays.call(online(0, "in-snapshot-stays"), ok(0))

	resp, err := http.Get("http://" + f.HTTPAddr() + "/v1/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	snap, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !bytes.HasPrefix(snap, []byte("wsregistry-snapshot ")) {
		t.Fatalf("save: %d %.60q", resp.StatusCode, snap)
	}

	gone.conn.Close(websocket.StatusNormalClosure, "")
	later := dialRaw(t, f, "/127.0.0.1/9503")
	later.call(online(0, "after-snapshot"), ok(0))
	eventually(t, 5*time.Second, func() bool { _, ok := f.Where("in-snapshot-gone-later"); return !ok }, "closed agent not deregistered")

	// Garbage is refused before anything changes.
	resp, err = http.Post("http://"+f.HTTPAddr()+"/v1/snapshot", "application/octet-stream", bytes.NewReader([]byte("not a snapshot")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("garbage restore: %d", resp.StatusCode)
	}
	// Restore through a follower (it goes to the leader).
	resp, err = http.Post("http://"+f.HTTPAddr()+"/v1/snapshot", "application/octet-stream", bytes.NewReader(snap))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("restore: %d %s", resp.StatusCode, body)
	}
	// Every node then agrees with the agents that are actually connected: the closed one is
	// gone again, the one that registered after the snapshot is back.
	for _, n := range tc.nodes {
		eventually(t, 10*time.Second, func() bool {
			_, gone := n.Where("in-snapshot-gone-later")
			_, stays := n.Where("in-snapshot-stays")
			_, later := n.Where("after-snapshot")
			return !gone && stays && later
		}, "%s did not reconcile after the restore: %v", n.cfg.NodeID, n.State().Namespaces())
	}
}
