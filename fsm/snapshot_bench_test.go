package fsm

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"
)

// Fixtures of 1,000,000 registrations, built once per test binary (building one through
// Apply takes seconds).
var bench1M struct {
	once         sync.Once
	scale        *FSM // shaped like wsbench's scale workload
	spread       *FSM // bigFSM: 100 namespaces of 10,000 instances
	scaleSnap    []byte
	spreadSnap   []byte
	scaleSnapV1  []byte // the JSON format of earlier builds
	spreadSnapV1 []byte
}

// scaleFSM holds agents x perAgent registrations as wsbench's scale workload leaves them:
// one node, one session per agent connection, each agent alone in perAgent namespaces of
// its own, all under the agent's one address.
func scaleFSM(tb testing.TB, agents, perAgent int) *FSM {
	a := &applier{t: tb, f: New()}
	a.ok(SetNode{Meta: NodeMeta{ID: "node0", WSAddr: "127.0.0.1:8427", HTTPAddr: "127.0.0.1:8428", RaftAddr: "127.0.0.1:8429", Incarnation: 1764860000000, Features: 3}})
	var batch []Command
	for i := range agents {
		s := sid("node0", 1764860000000, uint64(i+1))
		addr := fmt.Sprintf("127.0.%d.%d:%d", i>>8&255, i&255, 20000+i%40000)
		for j := range perAgent {
			batch = append(batch, Register{RequestID: fmt.Sprintf("node0-1764860000000-%d", i*perAgent+j),
				Reg: reg(fmt.Sprintf("scale-%d-%d", i, j), addr, s, 1764860000000+int64(i*perAgent+j)/10)})
			if len(batch) == 512 {
				a.ok(Batch{Commands: batch})
				batch = batch[:0]
			}
		}
	}
	if len(batch) > 0 {
		a.ok(Batch{Commands: batch})
	}
	return a.f
}

func load1M(b *testing.B) {
	bench1M.once.Do(func() {
		bench1M.scale = scaleFSM(b, 10000, 100)
		bench1M.spread = bigFSM(b, 1000000)
		bench1M.scaleSnap = snapshotBytes(b, bench1M.scale)
		bench1M.spreadSnap = snapshotBytes(b, bench1M.spread)
		bench1M.scaleSnapV1 = snapshotBytesJSON(b, bench1M.scale)
		bench1M.spreadSnapV1 = snapshotBytesJSON(b, bench1M.spread)
	})
}

// BenchmarkSnapshot1M: Snapshot and Persist (to io.Discard) of 1,000,000 registrations.
func BenchmarkSnapshot1M(b *testing.B) {
	load1M(b)
	for _, c := range []struct {
		name string
		f    *FSM
	}{{"scale", bench1M.scale}, {"spread", bench1M.spread}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s, err := c.f.Snapshot()
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Persist(&memSink{w: io.Discard}); err != nil {
					b.Fatal(err)
				}
				s.Release()
			}
		})
	}
}

// BenchmarkRestore1M: Restore of a snapshot of 1,000,000 registrations, in this build's
// format and (-v1) in the JSON format of earlier builds, which a node upgraded in place
// restores once.
func BenchmarkRestore1M(b *testing.B) {
	load1M(b)
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"scale", bench1M.scaleSnap}, {"spread", bench1M.spreadSnap},
		{"scale-v1", bench1M.scaleSnapV1}, {"spread-v1", bench1M.spreadSnapV1},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.data)))
			b.ReportAllocs()
			for b.Loop() {
				if err := New().Restore(io.NopCloser(bytes.NewReader(c.data))); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
