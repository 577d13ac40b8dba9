package fsm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// snapshotBytesJSON is what an earlier build (or a gated one) writes.
func snapshotBytesJSON(t testing.TB, f *FSM) []byte {
	t.Helper()
	s, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	s.(*snapshot).version = SnapshotVersionJSON
	var buf bytes.Buffer
	if err := s.(*snapshot).write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestSnapshot_BinaryRoundTripOfLargeStates(t *testing.T) {
	for name, f := range map[string]*FSM{
		"spread": bigFSM(t, 20000),
		"scale":  scaleFSM(t, 200, 50),
	} {
		t.Run(name, func(t *testing.T) {
			g := roundTrip(t, f)
			if !reflect.DeepEqual(dump(g), dump(f)) {
				t.Fatal("restored state differs")
			}
			if g.Stats() != f.Stats() || g.AppliedIndex() != f.AppliedIndex() {
				t.Fatalf("stats %+v index %d, want %+v %d", g.Stats(), g.AppliedIndex(), f.Stats(), f.AppliedIndex())
			}
			checkInvariants(t, g)
			if bin, js := snapshotBytes(t, f), snapshotBytesJSON(t, f); len(bin) >= len(js)*2/3 {
				t.Errorf("binary snapshot %d bytes, JSON %d", len(bin), len(js))
			}
		})
	}
}

// A node upgraded in place restores the snapshot its earlier build wrote: the file was
// written by the build before SnapshotVersion 2 from populated() plus one more node.
func TestRestore_ReadsSnapshotOfEarlierBuild(t *testing.T) {
	old, err := os.ReadFile("testdata/snapshot-v1.snap")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(old, []byte("wsregistry-snapshot 1\n{")) {
		t.Fatalf("testdata is not a version 1 snapshot: %q", clip(old))
	}
	a := populated(t)
	a.ok(SetNode{Meta: NodeMeta{ID: "c", WSAddr: "c:1", HTTPAddr: "c:2", RaftAddr: "c:3", Incarnation: 9, Features: 3, Version: "v0.9.0", Draining: true}})
	g := New()
	if err := restoreBytes(g, old); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(dump(g), dump(a.f)) {
		t.Fatalf("restored state differs:\n got %+v\nwant %+v", dump(g), dump(a.f))
	}
	checkInvariants(t, g)
	// Its next snapshot is binary and holds the same state.
	if b := snapshotBytes(t, g); !bytes.HasPrefix(b, []byte("wsregistry-snapshot 2\n")) || !reflect.DeepEqual(dump(roundTrip(t, g)), dump(a.f)) {
		t.Fatal("binary snapshot of a state restored from JSON differs")
	}
	// And this build's JSON writer still writes what the earlier build wrote.
	if js := snapshotBytesJSON(t, a.f); !bytes.Equal(js, old) {
		t.Fatalf("JSON snapshot differs from the earlier build's:\n%s\n%s", js, old)
	}
}

func TestSnapshot_GateWritesJSONUntilEveryMemberReadsBinary(t *testing.T) {
	a := populated(t)
	binaryOK := false
	a.f.SetBinarySnapshots(func() bool { return binaryOK })
	js := snapshotBytes(t, a.f)
	if !bytes.HasPrefix(js, []byte("wsregistry-snapshot 1\n{")) {
		t.Fatalf("gated snapshot starts %q", clip(js))
	}
	binaryOK = true
	bin := snapshotBytes(t, a.f)
	if !bytes.HasPrefix(bin, []byte("wsregistry-snapshot 2\n")) {
		t.Fatalf("ungated snapshot starts %q", clip(bin))
	}
	for _, b := range [][]byte{js, bin} {
		g := New()
		if err := restoreBytes(g, b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(dump(g), dump(a.f)) {
			t.Fatalf("restore of %q differs", clip(b))
		}
	}
}

// Restore reads the stream as it comes: short reads, one byte at a time, strings longer
// than its window, a read error.
func TestRestore_BinaryFromAnyReader(t *testing.T) {
	a := populated(t)
	long := strings.Repeat("x", streamBufSize+12345)
	a.ok(SetNode{Meta: NodeMeta{ID: "long", WSAddr: long, Version: "é\x00"}},
		Register{Reg: reg("svc", long[:2*streamBufSize/3]+":1", sid("long", 1, 1), 9)})
	data := snapshotBytes(t, a.f)
	want := dump(a.f)
	for name, r := range map[string]io.Reader{
		"one byte": iotest.OneByteReader(bytes.NewReader(data)),
		"half":     iotest.HalfReader(bytes.NewReader(data)),
		"data+EOF": iotest.DataErrReader(bytes.NewReader(data)),
	} {
		g := New()
		if err := g.Restore(io.NopCloser(r)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(dump(g), want) {
			t.Fatalf("%s: restored state differs", name)
		}
	}
	err := New().Restore(io.NopCloser(io.MultiReader(bytes.NewReader(data[:len(data)/2]), iotest.ErrReader(io.ErrClosedPipe))))
	if err == nil || !strings.Contains(err.Error(), "io: read/write on closed pipe") {
		t.Fatalf("read error: %v", err)
	}
}

// binSnap is a version 2 snapshot of a hand-made body, with a correct checksum.
func binSnap(body func(sw *streamWriter)) []byte {
	var buf bytes.Buffer
	sw := &streamWriter{w: &buf}
	sw.buf = fmt.Appendf(sw.buf, "%s %d\n", snapshotMagic, SnapshotVersion)
	body(sw)
	sw.flush()
	return binary.LittleEndian.AppendUint32(buf.Bytes(), sw.sum)
}

// counts writes the count of each section after the namespaces.
func (sw *streamWriter) counts(c ...uint64) {
	for _, n := range c {
		sw.uvarint(n)
	}
}

// instance writes one registration with a literal node id.
func (sw *streamWriter) instance(addr, node string, inc, seq uint64, since int64) {
	sw.string(addr)
	sw.uvarint(0)
	sw.string(node)
	sw.uvarint(inc)
	sw.uvarint(seq)
	sw.varint(since)
}

func TestRestore_RefusesCorruptBinarySnapshots(t *testing.T) {
	good := snapshotBytes(t, populated(t).f)
	flipped := bytes.Clone(good)
	flipped[len(flipped)-1] ^= 0x40
	sneaky := bytes.Clone(good) // "h:2" -> "h:3": decodes and validates, only the sum tells
	i := bytes.Index(sneaky, []byte("h:2"))
	sneaky[i+2] = '3'
	tests := []struct {
		name    string
		data    []byte
		mention string
	}{
		{"checksum", flipped, "checksum mismatch"},
		{"changed byte", sneaky, "the snapshot is corrupt"},
		{"trailing data", append(bytes.Clone(good), 0), "trailing data after snapshot"},
		{"body missing", []byte("wsregistry-snapshot 2\n"), "decode snapshot: snapshot truncated"},
		{"varint overflow", []byte("wsregistry-snapshot 2\n\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), "varint overflows"},
		{"invalid registration", binSnap(func(sw *streamWriter) {
			sw.counts(1, 1, 1)
			sw.string("svc")
			sw.uvarint(1)
			sw.instance("no-port", "a", 1, 1, 5)
			sw.counts(0, 0, 0, 0)
		}), "registration 0: invalid command: address \"no-port\" is not host:port"},
		{"empty namespace", binSnap(func(sw *streamWriter) {
			sw.counts(1, 1, 1)
			sw.string("svc")
			sw.uvarint(0)
		}), "namespace \"svc\" has no instances"},
		{"namespace twice", binSnap(func(sw *streamWriter) {
			sw.counts(1, 2, 2)
			for range 2 {
				sw.string("svc")
				sw.uvarint(1)
				sw.instance("h:1", "a", 1, 1, 5)
			}
			sw.counts(0, 0, 0, 0)
		}), "namespace \"svc\" appears twice"},
		{"session twice in a namespace", binSnap(func(sw *streamWriter) {
			sw.counts(1, 1, 1)
			sw.string("svc")
			sw.uvarint(2)
			sw.instance("h:1", "a", 1, 1, 5)
			sw.instance("h:2", "a", 1, 1, 0)
			sw.counts(0, 0, 0, 0)
		}), "session a/1/1 appears twice in namespace \"svc\""},
		{"bad node ref", binSnap(func(sw *streamWriter) {
			sw.counts(1, 1, 1)
			sw.string("svc")
			sw.uvarint(1)
			sw.string("h:1")
			sw.uvarint(3)
		}), "node reference 3, only 0 node ids so far"},
		{"duplicate node", binSnap(func(sw *streamWriter) {
			sw.counts(1, 0, 0, 2)
			for range 2 {
				sw.string("a")
				sw.counts(0, 0, 0, 1, 0, 0)
				sw.buf = append(sw.buf, 0)
			}
			sw.counts(0, 0, 0)
		}), "node \"a\" appears twice"},
		{"bad draining flag", binSnap(func(sw *streamWriter) {
			sw.counts(1, 0, 0, 1)
			sw.string("a")
			sw.counts(0, 0, 0, 1, 0, 0)
			sw.buf = append(sw.buf, 7)
			sw.counts(0, 0, 0)
		}), "node \"a\": bad draining flag"},
		{"purge mark twice", binSnap(func(sw *streamWriter) {
			sw.counts(1, 0, 0, 0, 2)
			sw.string("z")
			sw.uvarint(1)
			sw.string("z")
			sw.uvarint(2)
			sw.counts(0, 0)
		}), "purge mark of node \"z\" appears twice"},
		{"unknown result class", binSnap(func(sw *streamWriter) {
			sw.counts(1, 0, 0, 0, 0, 1)
			sw.string("x")
			sw.buf = append(sw.buf, 3)
			sw.counts(0)
		}), "request \"x\": unknown result class 3"},
		{"tombstone without node", binSnap(func(sw *streamWriter) {
			sw.counts(1, 0, 0, 0, 0, 0, 1)
			sw.uvarint(0)
			sw.string("")
			sw.counts(1, 1)
		}), "tombstone 0: session has an empty node"},
		{"huge counts", binSnap(func(sw *streamWriter) {
			sw.counts(1, 1<<62, 1<<62)
			sw.string("svc")
			sw.uvarint(1 << 62)
		}), "decode snapshot"},
		{"huge string", binSnap(func(sw *streamWriter) {
			sw.counts(1, 1, 1)
			sw.uvarint(1 << 62)
			sw.buf = append(sw.buf, strings.Repeat("y", streamBufSize+1)...)
		}), "snapshot truncated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := populated(t)
			before := dump(a.f)
			called := false
			a.f.SetObserver(func(uint64, []Change) { called = true })
			err := restoreBytes(a.f, tt.data)
			if err == nil {
				t.Fatal("Restore accepted it")
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %q does not mention %q", err, tt.mention)
			}
			if after := dump(a.f); !reflect.DeepEqual(before, after) || called {
				t.Fatal("failed Restore changed the state or called the observer")
			}
		})
	}
}

// Every proper prefix of a snapshot is refused.
func TestRestore_RefusesEveryTruncation(t *testing.T) {
	good := snapshotBytes(t, populated(t).f)
	for n := range len(good) {
		if err := restoreBytes(New(), good[:n]); err == nil {
			t.Fatalf("Restore accepted the first %d of %d bytes", n, len(good))
		}
	}
}

// The checksum is CRC-32C of everything before it.
func TestSnapshot_BinaryChecksumCoversHeader(t *testing.T) {
	good := snapshotBytes(t, populated(t).f)
	body, sum := good[:len(good)-4], binary.LittleEndian.Uint32(good[len(good)-4:])
	if want := crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)); sum != want {
		t.Fatalf("stored %08x, want %08x", sum, want)
	}
}
