package fsm

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"testing"
)

// bigFSM holds n registrations spread over 100 namespaces and 3 nodes, as a
// realistic proposer would write them: batches of 512.
func bigFSM(tb testing.TB, n int) *FSM {
	a := &applier{t: tb, f: New()}
	var batch []Command
	for i := range n {
		s := sid(fmt.Sprintf("node-%d", i%3), 1700000000000, uint64(i))
		addr := fmt.Sprintf("10.%d.%d.%d:%d", i>>16&255, i>>8&255, i&255, 8000+i%1000)
		batch = append(batch, Register{RequestID: fmt.Sprintf("req-%d", i),
			Reg: reg(fmt.Sprintf("service-%03d", i%100), addr, s, 1700000000000+int64(i))})
		if len(batch) == 512 || i == n-1 {
			a.ok(Batch{Commands: batch})
			batch = batch[:0]
		}
	}
	return a.f
}

func BenchmarkPick(b *testing.B) {
	f := bigFSM(b, 10000)
	b.ReportAllocs()
	b.ResetTimer()
	var n uint64
	for b.Loop() {
		if _, ok := f.Pick("service-042", n); !ok {
			b.Fatal("not found")
		}
		n++
	}
}

func BenchmarkPickParallel(b *testing.B) {
	f := bigFSM(b, 10000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var n uint64
		for pb.Next() {
			f.Pick("service-042", n)
			n++
		}
	})
}

func TestPick_DoesNotAllocate(t *testing.T) {
	f := bigFSM(t, 1000)
	var n uint64
	if allocs := testing.AllocsPerRun(1000, func() { f.Pick("service-007", n); n++ }); allocs != 0 {
		t.Fatalf("Pick allocates %v times", allocs)
	}
}

func BenchmarkRestore100k(b *testing.B) {
	data := snapshotBytes(b, bigFSM(b, 100000))
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := New().Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSnapshot100k(b *testing.B) {
	f := bigFSM(b, 100000)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		s, _ := f.Snapshot()
		if err := s.(*snapshot).write(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemoryPerRegistration reports the heap a restored state holds per
// registration (request ids and tombstones excluded: the snapshot has the
// registrations only).
func BenchmarkMemoryPerRegistration(b *testing.B) {
	const n = 100000
	src := bigFSM(b, n)
	src.mu.Lock()
	src.st.requests = newIDRing(MaxRequestIDs, 0)
	src.mu.Unlock()
	data := snapshotBytes(b, src)
	src = nil
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f := New()
		if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/registration")
		runtime.KeepAlive(f)
	}
}

// BenchmarkRegister_SessionWithManyNamespaces: one agent connection that already
// registered 2,000 namespaces registers one more (the wsbench register workload's
// agents do this for the length of a run).
func BenchmarkRegister_SessionWithManyNamespaces(b *testing.B) {
	a := &applier{t: b, f: New()}
	s := sid("node-0", 1700000000000, 1)
	var batch []Command
	for i := range 2000 {
		batch = append(batch, Register{RequestID: fmt.Sprintf("req-%d", i),
			Reg: reg(fmt.Sprintf("service-%05d", i), "10.0.0.1:8000", s, 1700000000000)})
	}
	a.ok(Batch{Commands: batch})
	b.ReportAllocs()
	i := 2000
	for b.Loop() {
		a.ok(Register{RequestID: fmt.Sprintf("req-%d", i),
			Reg: reg(fmt.Sprintf("service-%05d", i), "10.0.0.1:8000", s, 1700000000000)})
		i++
	}
}
