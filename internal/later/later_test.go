package later

import (
	"slices"
	"testing"
)

func TestBatch_RunsDeferredWorkInOrderOnce(t *testing.T) {
	var got []int
	var b Batch
	for i := range 3 {
		b.Do(func() { got = append(got, i) })
	}
	if len(got) != 0 {
		t.Fatalf("ran before Run: %v", got)
	}
	b.Run()
	b.Run()
	if !slices.Equal(got, []int{0, 1, 2}) {
		t.Fatalf("ran %v, want [0 1 2] once", got)
	}
}

func TestBatch_NilRunsAtOnce(t *testing.T) {
	ran := false
	var b *Batch
	b.Do(func() { ran = true })
	if !ran {
		t.Fatal("a nil batch deferred the work")
	}
}
