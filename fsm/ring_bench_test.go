package fsm

import (
	"fmt"
	"testing"
)

// A registration's request id on a node in steady state: the ring of MaxRequestIDs ids is
// full, every command brings a new id (looked up, remembered, the oldest forgotten). The
// registration itself is a repeat, so this measures the dedup bookkeeping.
//
//	go test -run '^$' -bench ApplyNewRequestID ./fsm/
func BenchmarkApplyNewRequestID(b *testing.B) {
	const distinct = 1 << 18 // ids come back only long after the ring forgot them
	ids := make([]string, distinct)
	for i := range ids {
		ids[i] = fmt.Sprintf("node1/1796406561146/%d", i) // the shape registry's ids have
	}
	st := newState(MaxRequestIDs, MaxTombstones)
	r := reg("service-a", "10.0.0.1:8000", sid("node1", 1796406561146, 7), 1700000000000)
	apply := func(i int) {
		if err := st.apply(Register{RequestID: ids[i%distinct], Reg: r}); err != nil {
			b.Fatal(err)
		}
		st.changes = st.changes[:0]
	}
	for i := range MaxRequestIDs {
		apply(i)
	}
	i := MaxRequestIDs
	b.ResetTimer()
	for b.Loop() {
		apply(i)
		i++
	}
	if st.requests.len() != MaxRequestIDs {
		b.Fatal(fmt.Sprintf("ring holds %d ids, want %d", st.requests.len(), MaxRequestIDs))
	}
}
