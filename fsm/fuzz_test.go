package fsm

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
)

// fuzzSeedEntries are log entries as Encode writes them, plus hand-made oddities.
func fuzzSeedEntries(t testing.TB) [][]byte {
	out := [][]byte{
		{},
		{byte(TypeRegister)},
		{0x7f, '{', '}'},
		append([]byte{byte(TypeRegister)}, `{"rid":"r","reg":{"ns":"svc","addr":"h:1","session":{"node":"a","inc":1,"seq":1},"since":1},"reg":null}`...),
		append([]byte{byte(TypeBatch)}, `[{"t":5,"b":[]}]`...),
		append([]byte{byte(TypeBatch)}, `[{"t":129,"b":"anything"},{"t":2,"b":{"session":{"node":"a","inc":1,"seq":1}}}]`...),
		append([]byte{byte(IgnoreIfUnknown | 9)}, "not json at all"...),
		append([]byte{byte(TypePurgeNode)}, `{"node":"a","upto":18446744073709551615}`...),
		append([]byte{byte(TypeSetNode)}, `{"meta":{"id":"","inc":1}}`...),
	}
	for _, c := range []Command{
		Register{RequestID: "r1", Reg: reg("svc", "10.0.0.7:9001", sid("node0", 3, 7), 1700000000000)},
		Deregister{RequestID: "r2", Session: sid("node0", 3, 7)},
		PurgeNode{RequestID: "r3", Node: "node1", UpToIncarnation: 2},
		SetNode{Meta: NodeMeta{ID: "node0", WSAddr: "a:8427", HTTPAddr: "a:8428", RaftAddr: "a:8429", Incarnation: 3}},
		RemoveNode{RequestID: "r4", Node: "node2"},
		Batch{Commands: []Command{
			Register{RequestID: "b1", Reg: reg("x", "h:2", sid("n/1", 1, 1), 5)},
			Register{RequestID: "b1", Reg: reg("y", "h:2", sid("n/1", 1, 1), 5)},
			Deregister{RequestID: "b2", Session: sid("n/1", 1, 1)},
			Unknown{T: IgnoreIfUnknown | 1, Body: []byte(`{"future":true}`)},
		}},
	} {
		out = append(out, mustEncode(t, c))
	}
	return out
}

// FuzzDecode: Decode never panics and fails only with ErrMalformed or ErrUnknownType; what
// it accepts re-encodes to an entry that decodes to the same command; Apply of an
// accepted entry never panics, is deterministic, keeps the state's invariants, and a
// second Apply of an entry whose commands all carry request ids changes nothing (no
// request id is applied twice).
func FuzzDecode(f *testing.F) {
	for _, b := range fuzzSeedEntries(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cmd, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownType) {
				t.Fatalf("Decode error %v wraps neither ErrMalformed nor ErrUnknownType", err)
			}
			return
		}
		if enc, err := Encode(cmd); err == nil {
			again, err := Decode(enc)
			if err != nil {
				t.Fatalf("Decode(Encode(%#v)) = %v; entry %q", cmd, err, enc)
			}
			if !reflect.DeepEqual(fuzzNormalize(again), fuzzNormalize(cmd)) {
				t.Fatalf("round trip changed the command:\n got %#v\nwant %#v", again, cmd)
			}
		}

		// Two FSMs with the same history apply the same entry to the same state.
		x, y := populated(t), populated(t)
		rx, ry := x.raw(b), y.raw(b)
		if !reflect.DeepEqual(fuzzErrStrings(rx), fuzzErrStrings(ry)) || !reflect.DeepEqual(dump(x.f), dump(y.f)) {
			t.Fatalf("Apply is not deterministic for %q", b)
		}
		if n := fuzzCommandCount(cmd); len(rx) != n {
			t.Fatalf("Apply returned %d results for %d commands", len(rx), n)
		}
		checkInvariants(t, x.f)

		if fuzzAllHaveRequestIDs(cmd) {
			before := dumpNoIndex(x.f)
			again := x.raw(b)
			if !reflect.DeepEqual(dumpNoIndex(x.f), before) {
				t.Fatalf("re-applying %q (every command has a request id) changed the state", b)
			}
			if !reflect.DeepEqual(fuzzErrStrings(again), fuzzErrStrings(rx)) {
				t.Fatalf("re-applying %q gave %v, first time %v", b, again, rx)
			}
		}
	})
}

func fuzzCommandCount(cmd Command) int {
	if b, ok := cmd.(Batch); ok {
		return len(b.Commands)
	}
	return 1
}

func fuzzAllHaveRequestIDs(cmd Command) bool {
	cmds := []Command{cmd}
	if b, ok := cmd.(Batch); ok {
		cmds = b.Commands
	}
	for _, c := range cmds {
		if _, ok := c.(Unknown); ok {
			continue // skipped by Apply: nothing to apply twice
		}
		if rid, _ := requestID(c); rid == "" {
			return false
		}
	}
	return true
}

// FuzzRestore: Restore of arbitrary bytes never panics; on error the FSM keeps its previous
// state (and index) exactly; on success the restored state keeps the invariants, snapshots
// to bytes that restore to the same state, and still applies commands.
func FuzzRestore(f *testing.F) {
	good := snapshotBytes(f, populated(f).f)
	f.Add(good)
	f.Add(snapshotBytes(f, New()))
	f.Add([]byte("wsregistry-snapshot 1\n{}"))
	f.Add([]byte("wsregistry-snapshot 2\n{}"))
	f.Add([]byte("wsregistry-snapshot 1\n{} {}"))
	f.Add([]byte("wsregistry-snapshot 1\n" + `{"index":5,"namespaces":[{"name":"a","addr":["h:1"],"node":["n"],"inc":[1],"seq":[1],"since":[1,2]}]}`))
	f.Add([]byte("wsregistry-snapshot 1\n" + `{"request_ids":["x"],"failed_requests":{"y":{"class":"invalid"}}}`))
	f.Add([]byte("wsregistry-snapshot 1\n" + `{"tombstones":["nope"],"nodes":[{"id":""}]}`))
	f.Add([]byte(""))
	f.Add(good[:len(good)/2])
	f.Add(snapshotBytesJSON(f, populated(f).f))
	f.Add([]byte("wsregistry-snapshot 2\n"))
	f.Add(binSnap(func(sw *streamWriter) {
		sw.counts(7, 2, 1)
		sw.string("svc")
		sw.uvarint(2)
		sw.instance("h:2", "a", 1, 1, 5)
		sw.instance("h:1", "a", 1, 2, -1) // out of order: sorted on restore
		sw.counts(0, 1)
		sw.string("z")
		sw.uvarint(3)
		sw.counts(2)
		sw.string("r")
		sw.buf = append(sw.buf, 0)
		sw.string("q")
		sw.buf = append(sw.buf, 2)
		sw.string("gone")
		sw.counts(1, 1, 2, 9)
	}))
	f.Fuzz(func(t *testing.T, b []byte) {
		a := populated(t)
		before := dump(a.f)
		beforeIndex := a.f.AppliedIndex()
		if err := restoreBytes(a.f, b); err != nil {
			if got := dump(a.f); !reflect.DeepEqual(got, before) || a.f.AppliedIndex() != beforeIndex {
				t.Fatalf("failed Restore (%v) changed the state:\n got %+v\nwant %+v", err, got, before)
			}
			return
		}
		checkInvariants(t, a.f)
		// A success remembered with a detail (only a hand-made snapshot has one) behaves as
		// a plain success, and our own snapshots drop the detail: compare without it.
		restored := fuzzNoSuccessDetail(dump(a.f))
		snap := snapshotBytes(t, a.f)
		g := New()
		if err := restoreBytes(g, snap); err != nil {
			t.Fatalf("re-restoring our own snapshot of an accepted one: %v\n%s", err, snap)
		}
		if !reflect.DeepEqual(fuzzNoSuccessDetail(dump(g)), restored) {
			t.Fatalf("snapshot round trip changed the state:\n got %+v\nwant %+v", dump(g), restored)
		}
		if again := snapshotBytes(t, g); !bytes.Equal(again, snap) {
			t.Fatalf("snapshots of equal states differ:\n%s\n%s", again, snap)
		}
		// The restored state must be usable: Apply after it never panics.
		a.index = a.f.AppliedIndex()
		for _, e := range fuzzSeedEntries(t)[3:] {
			if _, err := Decode(e); err == nil {
				a.raw(e)
			}
		}
		checkInvariants(t, a.f)
		_ = a.f.Apply(&raft.Log{Index: a.index + 1, Type: raft.LogNoop})
	})
}

// fuzzErrStrings makes results comparable with reflect.DeepEqual.
func fuzzErrStrings(errs []error) []string {
	out := make([]string, len(errs))
	for i, err := range errs {
		if err != nil {
			out[i] = err.Error()
		}
	}
	return out
}

// fuzzNormalize maps an Unknown with an empty body to "{}", which Encode writes for it.
func fuzzNormalize(cmd Command) Command {
	switch c := cmd.(type) {
	case Unknown:
		if len(c.Body) == 0 {
			c.Body = []byte("{}")
		}
		return c
	case Batch:
		out := Batch{Commands: make([]Command, len(c.Commands))}
		for i, x := range c.Commands {
			out.Commands[i] = fuzzNormalize(x)
		}
		return out
	}
	return cmd
}

func fuzzNoSuccessDetail(d *snapshotData) *snapshotData {
	for i := range d.Requests {
		if d.Requests[i].Class == "" {
			d.Requests[i].Detail = ""
		}
	}
	return d
}
