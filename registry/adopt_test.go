package registry

import (
	"context"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
)

// The leader's check of a silent member's agents covers the lives it found silent: a life
// the member announced since (back from a partition, registering through its new
// incarnation) is neither checked nor purged with them.
func TestAdopt_CoversOnlyTheLivesFoundSilent(t *testing.T) {
	n := startNode(t, t.TempDir())
	gone := listen(t) // an address nothing answers on: the agents fail the check
	deadAddr := gone.Addr().String()
	gone.Close()
	oldLife := fsm.SessionID{Node: "ghost", Incarnation: 1, Seq: 1}
	newLife := fsm.SessionID{Node: "ghost", Incarnation: 2, Seq: 1}
	errs, err := n.submit(context.Background(),
		fsm.Register{RequestID: "adopt-test/1", Reg: fsm.Registration{Namespace: "old-life", Address: deadAddr, Session: oldLife, Since: 1}},
		fsm.Register{RequestID: "adopt-test/2", Reg: fsm.Registration{Namespace: "new-life", Address: deadAddr, Session: newLife, Since: 2}})
	if err == nil {
		err = firstError(errs)
	}
	if err != nil {
		t.Fatal(err)
	}

	newAdopter(n).startAdopt("ghost", 1) // found silent while its newest life was 1
	eventually(t, 10*time.Second, func() bool { return len(n.state.Instances("old-life")) == 0 },
		"the silent life's agent, which does not answer, was never purged")
	if got := n.state.Instances("new-life"); len(got) != 1 || got[0].Session != newLife {
		t.Fatalf("the newer life's registration after the adoption: %+v, want it untouched", got)
	}
}
