package fsm

import (
	"fmt"
	"testing"
)

func TestIDRing_ForgetsOldestFirst(t *testing.T) {
	r := newIDRing(3, 0)
	for i := range 5 {
		r.add(fmt.Sprint("id", i), result{Detail: fmt.Sprint(i)})
	}
	r.add("id3", result{Detail: "again"}) // present: keeps its place and result
	var got []string
	r.each(func(id string, res result) { got = append(got, id+"="+res.Detail) })
	if fmt.Sprint(got) != "[id2=2 id3=3 id4=4]" {
		t.Fatalf("ring holds %v, want [id2=2 id3=3 id4=4]", got)
	}
	for _, id := range []string{"id0", "id1"} {
		if _, ok := r.get(id); ok {
			t.Errorf("%s still remembered past the limit", id)
		}
	}
	if res, ok := r.get("id4"); !ok || res.Detail != "4" {
		t.Errorf("get(id4) = %v, %v; want its result", res, ok)
	}
}

// Two ids with one hash: the first is remembered, the second is not (on every node
// alike, as the hash is not seeded), and neither is mistaken for the other.
func TestIDRing_HashCollisionRemembersOnlyTheFirst(t *testing.T) {
	r := newIDRing(4, 0)
	r.addHashed(42, "first", result{Class: classInvalid})
	r.addHashed(42, "second", result{})
	if r.len() != 1 {
		t.Fatalf("ring holds %d ids, want 1", r.len())
	}
	if _, ok := r.getHashed(42, "second"); ok {
		t.Error("second id reported as seen: it would take the first one's result")
	}
	if res, ok := r.getHashed(42, "first"); !ok || res.Class != classInvalid {
		t.Errorf("first id: %v, %v; want its result", res, ok)
	}
}
