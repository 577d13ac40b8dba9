package registry

import (
	"context"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
)

func TestReconcile_SessionWithoutConnectionIsDeregistered(t *testing.T) {
	n := startNode(t, t.TempDir(), func(c *Config) { c.NodeGrace = 2 * time.Second })
	a := dialRaw(t, n, "/127.0.0.1/9001")
	a.call(online(0, "live"), ok(0))
	// A registration of this node's current incarnation whose connection is gone, as a
	// deregistration that failed during an election would leave behind.
	orphan := fsm.SessionID{Node: n.cfg.NodeID, Incarnation: n.Incarnation(), Seq: 1 << 40}
	if _, err := n.submit(context.Background(), fsm.Register{Reg: fsm.Registration{
		Namespace: "orphan", Address: "127.0.0.1:9999", Session: orphan, Since: time.Now().UnixMilli(),
	}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := n.Where("orphan"); !ok {
		t.Fatal("orphan not registered")
	}
	eventually(t, 5*time.Second, func() bool { _, ok := n.Where("orphan"); return !ok }, "orphaned session never reconciled away")
	if _, ok := n.Where("live"); !ok {
		t.Fatal("reconcile removed a session that has a connection")
	}
}
