package fsm

import (
	"bytes"
	"io"
	"testing"
)

// BenchmarkPurge1M: a node restarted with a new incarnation purges its old one, here every
// one of 1,000,000 registrations (wsbench's scale workload, then a restart): part of the
// restart-to-ready time of issue 14.
//
//	go test -run '^$' -bench Purge1M -benchtime 3x ./fsm/
func BenchmarkPurge1M(b *testing.B) {
	load1M(b)
	for b.Loop() {
		b.StopTimer()
		f := New()
		if err := f.Restore(io.NopCloser(bytes.NewReader(bench1M.scaleSnap))); err != nil {
			b.Fatal(err)
		}
		a := &applier{t: b, f: f, index: f.AppliedIndex()}
		b.StartTimer()
		a.ok(PurgeNode{Node: "node0", UpToIncarnation: 1764860000000})
		b.StopTimer()
		if n := f.Stats().Registrations; n != 0 {
			b.Fatalf("%d registrations left after the purge", n)
		}
		b.StartTimer()
	}
}
