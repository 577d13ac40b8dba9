package cluster

import (
	"context"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
)

// forwarder coalesces a follower's concurrent writes into one call to the leader, as group
// commit does on the leader itself.
type forwarder struct {
	b *batcher
}

// forwardSlotWait is how long the next forwarded batch waits for the one in flight before it
// goes anyway: well above a forward's usual time under load (BENCHMARKS.md has the slowest
// whole registrations measured), so only a forward stuck on a vanished leader is passed.
const forwardSlotWait = 250 * time.Millisecond

// newForwarder forwards through c to whatever leader() answers at the time of each call,
// in the binary form when binary() says every server reads it.
func newForwarder(c *peerClient, leader func() (string, error), binary func() bool, max int, wait time.Duration) *forwarder {
	b := newBatcher(max, wait, func(cmds []fsm.Command) func() (uint64, []error, error) {
		addr, err := leader()
		if err != nil {
			return func() (uint64, []error, error) { return 0, nil, err }
		}
		return func() (uint64, []error, error) {
			// The client's own timeout bounds the call; the callers' retries carry the same
			// request ids, so a batch that committed without an answer is not applied twice.
			return c.forward(context.Background(), addr, cmds, binary())
		}
	}, batcherHooks{slotWait: forwardSlotWait})
	return &forwarder{b: b}
}

// forward commits cmds through the leader as one unit and returns the entry's index and
// one result per command.
func (f *forwarder) forward(ctx context.Context, cmds ...fsm.Command) (uint64, []error, error) {
	return f.b.propose(ctx, cmds)
}

func (f *forwarder) close() { f.b.close() }
