package cluster

import (
	"errors"
	"net"
	"sync"

	"github.com/hashicorp/raft"
)

// ErrNoFaultInjection refuses a fault switch on a node started without Config.FaultInjection.
var ErrNoFaultInjection = errors.New("fault injection is off on this node (start it with --fault-injection)")

// faultyLogStore stands in for a disk that stops answering: while the switch is on, every
// log write blocks (as a write to a hung disk does) until the switch is turned off or the
// node closes. Reads go through, as from a page cache. Only with Config.FaultInjection.
type faultyLogStore struct {
	raft.LogStore

	mu      sync.Mutex
	blocked bool
	release chan struct{} // closed when the switch goes off
}

func newFaultyLogStore(s raft.LogStore) *faultyLogStore {
	return &faultyLogStore{LogStore: s}
}

func (f *faultyLogStore) set(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case on && !f.blocked:
		f.blocked, f.release = true, make(chan struct{})
	case !on && f.blocked:
		f.blocked = false
		close(f.release)
	}
}

func (f *faultyLogStore) on() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.blocked
}

func (f *faultyLogStore) wait() {
	f.mu.Lock()
	ch := f.release
	blocked := f.blocked
	f.mu.Unlock()
	if blocked {
		<-ch
	}
}

func (f *faultyLogStore) StoreLog(l *raft.Log) error {
	f.wait()
	return f.LogStore.StoreLog(l)
}

func (f *faultyLogStore) StoreLogs(logs []*raft.Log) error {
	f.wait()
	return f.LogStore.StoreLogs(logs)
}

func (f *faultyLogStore) DeleteRange(lo, hi uint64) error {
	f.wait()
	return f.LogStore.DeleteRange(lo, hi)
}

// SetDiskBlocked turns the blocked-disk fault on or off (tests and the chaos harness):
// while on, this node's raft log writes hang. Only on a node started with FaultInjection.
func (n *Node) SetDiskBlocked(on bool) error {
	if n.faults == nil {
		return ErrNoFaultInjection
	}
	n.faults.set(on)
	if on {
		n.log.Warn("fault switch: raft log writes blocked")
	} else {
		n.log.Warn("fault switch: raft log writes released")
	}
	return nil
}

// DiskBlocked reports the blocked-disk switch.
func (n *Node) DiskBlocked() bool { return n.faults != nil && n.faults.on() }

// faultListener wraps the internal calls' accepted connections like raft's, so the
// partition switch also cuts calls arriving on connections opened before it was set (a
// peer's pooled keep-alive connection would otherwise still reach this node).
type faultListener struct {
	net.Listener
	layer *streamLayer
}

func (l faultListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &faultConn{Conn: c, layer: l.layer}, nil
}
