package fsm

import (
	"reflect"
	"testing"
)

// A batch decodes to the same commands and applies to the same state and results from
// the JSON form of older builds as from the binary form, and the binary form is smaller.
func TestDecode_LegacyJSONBatchEqualsBinary(t *testing.T) {
	batch := Batch{Commands: []Command{
		Register{RequestID: "b1", Reg: reg("x", "h:2", sid("n/1", 1, 1), 5)},
		Register{RequestID: "b1", Reg: reg("y", "h:2", sid("n/1", 1, 1), -5)},
		SetNode{RequestID: "b3", Meta: NodeMeta{ID: "n/1", WSAddr: "a:1", HTTPAddr: "a:2", RaftAddr: "a:3", Incarnation: 1}},
		Unregister{RequestID: "b4", Session: sid("n/1", 1, 1), Namespace: "y"},
		PurgeNode{RequestID: "b5", Node: "n/2", UpToIncarnation: 1<<64 - 1},
		Deregister{RequestID: "b2", Session: sid("n/1", 1, 1)},
		RemoveNode{RequestID: "b6", Node: "n/3"},
		Unknown{T: IgnoreIfUnknown | 1, Body: []byte(`{"future":true}`)},
	}}
	legacy, err := EncodeJSON(batch)
	if err != nil {
		t.Fatal(err)
	}
	bin := mustEncode(t, batch)
	if bin[0] != byte(TypeBinaryBatch) || legacy[0] != byte(TypeBatch) {
		t.Fatalf("type bytes: binary %d, legacy %d", bin[0], legacy[0])
	}
	if len(bin) >= len(legacy) {
		t.Errorf("binary form %d bytes, JSON form %d", len(bin), len(legacy))
	}
	fromLegacy, err := Decode(legacy)
	if err != nil {
		t.Fatal(err)
	}
	fromBinary, err := Decode(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromLegacy, batch) || !reflect.DeepEqual(fromBinary, batch) {
		t.Fatalf("decoded differently:\nlegacy %#v\nbinary %#v\n  want %#v", fromLegacy, fromBinary, batch)
	}
	x, y := populated(t), populated(t)
	rx, ry := x.raw(legacy), y.raw(bin)
	if !reflect.DeepEqual(fuzzErrStrings(rx), fuzzErrStrings(ry)) || !reflect.DeepEqual(dump(x.f), dump(y.f)) {
		t.Fatalf("the two forms applied differently: %v vs %v", fuzzErrStrings(rx), fuzzErrStrings(ry))
	}
}
