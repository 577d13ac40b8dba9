package fsm

import (
	"fmt"
	"testing"
)

// codecBenchBatch is a forwarded batch of every kind, as every node decodes it.
func codecBenchBatch() Batch {
	var cmds []Command
	for i := range 64 {
		s := sid(fmt.Sprintf("node-%d", i%3), 1700000000000, uint64(i))
		cmds = append(cmds,
			Register{RequestID: fmt.Sprintf("req-%d", i), Reg: reg(fmt.Sprintf("service-%03d", i), "10.0.0.1:8000", s, 1700000000000)},
			Deregister{RequestID: fmt.Sprintf("dreq-%d", i), Session: s},
			Unregister{Session: s, Namespace: "service-x"},
			PurgeNode{Node: "node-9", UpToIncarnation: 1},
			SetNode{Meta: NodeMeta{ID: "node-0", WSAddr: "a:1", HTTPAddr: "a:2", RaftAddr: "a:3", Incarnation: 1}},
			RemoveNode{Node: "node-8"},
		)
	}
	return Batch{Commands: cmds}
}

func BenchmarkDecode_BinaryBatch(b *testing.B) {
	data := mustEncode(b, codecBenchBatch())
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode_JSONBatch(b *testing.B) {
	data, err := EncodeJSON(codecBenchBatch())
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncode_BinaryBatch(b *testing.B) {
	batch := codecBenchBatch()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(batch); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeJSON_Batch(b *testing.B) {
	batch := codecBenchBatch()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := EncodeJSON(batch); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApply_BinaryBatch decodes and applies a batch whose commands, after the first
// round, change nothing (repeats, no-op purges, request ids already seen), so each round
// measures decoding and dispatch rather than a growing state.
func BenchmarkApply_BinaryBatch(b *testing.B) {
	a := newApplier(b)
	var cmds []Command
	for i := range 64 {
		s := sid("node-0", 1, uint64(i))
		cmds = append(cmds,
			Register{Reg: reg(fmt.Sprintf("service-%03d", i), "10.0.0.1:8000", s, 1700000000000)},
			Register{RequestID: fmt.Sprintf("req-%d", i), Reg: reg("other", "10.0.0.1:8000", s, 1)},
			Unregister{Session: s, Namespace: "nothing"},
			PurgeNode{Node: "node-9", UpToIncarnation: 1},
			SetNode{Meta: NodeMeta{ID: "node-0", WSAddr: "a:1", HTTPAddr: "a:2", RaftAddr: "a:3", Incarnation: 1}},
			RemoveNode{Node: "node-8"},
			Unknown{T: IgnoreIfUnknown | 1, Body: []byte("{}")},
		)
	}
	data := mustEncode(b, Batch{Commands: cmds})
	a.raw(data)
	b.ReportAllocs()
	for b.Loop() {
		a.raw(data)
	}
}
