package fsm

import (
	"fmt"
	"math/rand/v2"
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

// The table against a plain model, with hashes from a small range so that home slots
// collide, probes wrap around the table's end, and removals shift slots back.
func TestIDRing_MatchesAModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		limit := 1 + rng.IntN(40)
		r := newIDRing(limit, rng.IntN(limit+1))
		type entry struct {
			hash uint64
			id   string
		}
		var model []entry // oldest first
		hashes := uint64(1 + rng.IntN(3*limit))
		for op := range 300 {
			h := rng.Uint64N(hashes)
			if rng.IntN(4) == 0 {
				h |= 1 << 40 // same home slot as h, another hash
			}
			id := fmt.Sprintf("id-%d-%d", h, op)
			r.addHashed(h, id, result{Detail: id})
			present := false
			for _, e := range model {
				present = present || e.hash == h
			}
			if !present {
				model = append(model, entry{h, id})
				if len(model) > limit {
					model = model[1:]
				}
			}
			for _, e := range model {
				if res, ok := r.getHashed(e.hash, e.id); !ok || res.Detail != e.id {
					t.Fatalf("round %d op %d: %s (hash %d) lost: %v %v", round, op, e.id, e.hash, res, ok)
				}
			}
			var got []string
			r.each(func(id string, _ result) { got = append(got, id) })
			if len(got) != len(model) {
				t.Fatalf("round %d op %d: ring holds %d ids, model %d", round, op, len(got), len(model))
			}
			for i := range got {
				if got[i] != model[i].id {
					t.Fatalf("round %d op %d: order %v differs from the model", round, op, got)
				}
			}
		}
		for h := range hashes {
			for _, hh := range []uint64{h, h | 1<<40} {
				inModel := false
				for _, e := range model {
					inModel = inModel || e.hash == hh
				}
				pos, found := r.find(hh)
				if found != inModel {
					t.Fatalf("round %d: hash %d found=%v, in model=%v (slot %d)", round, hh, found, inModel, pos)
				}
			}
		}
	}
}
