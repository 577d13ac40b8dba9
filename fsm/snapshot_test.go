package fsm

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// populated returns an FSM with some of everything.
func populated(t testing.TB) *applier {
	a := newApplier(t)
	a.ok(SetNode{RequestID: "n1", Meta: NodeMeta{ID: "a", WSAddr: "a:1", Incarnation: 1}},
		SetNode{Meta: NodeMeta{ID: "b", Incarnation: 7}},
		Register{RequestID: "r1", Reg: reg("svc", "h:1", sA1, 3)},
		Register{Reg: reg("svc", "h:2", sA2, 2)},
		Register{Reg: reg("other", "h:2", sA2, 2)},
		Register{Reg: reg("svc", "h:3", sB1, 2)},
		Deregister{Session: sid("c", 1, 1)},
		PurgeNode{Node: "z", UpToIncarnation: 4})
	a.apply(Register{RequestID: "bad", Reg: reg("", "h:1", sA1, 1)})
	return a
}

func TestSnapshot_RestoreReproducesState(t *testing.T) {
	a := populated(t)
	g := roundTrip(t, a.f)
	if want, got := dump(a.f), dump(g); !reflect.DeepEqual(want, got) {
		t.Fatalf("restored state differs:\n got %+v\nwant %+v", got, want)
	}
	if g.AppliedIndex() != a.f.AppliedIndex() || g.Stats() != a.f.Stats() {
		t.Fatalf("index/stats differ: %d %+v vs %d %+v", g.AppliedIndex(), g.Stats(), a.f.AppliedIndex(), a.f.Stats())
	}
	if !reflect.DeepEqual(g.Namespaces(), a.f.Namespaces()) || !reflect.DeepEqual(g.Nodes(), a.f.Nodes()) {
		t.Fatal("reads differ after restore")
	}
	checkInvariants(t, g)
	// Remembered results, tombstones and marks came along.
	b := &applier{t: t, f: g, index: a.index}
	wantErrs(t, b.apply(Register{RequestID: "bad", Reg: reg("svc", "h:1", sA1, 1)}), ErrInvalid)
	wantErrs(t, b.apply(Register{Reg: reg("svc", "h:1", sid("c", 1, 1), 1)}), ErrSessionClosed)
	wantErrs(t, b.apply(Register{Reg: reg("svc", "h:1", sid("z", 4, 1), 1)}), ErrSessionClosed)
}

func TestSnapshot_FormatHasHeaderAndIsDeterministic(t *testing.T) {
	a := populated(t)
	b1 := snapshotBytes(t, a.f)
	if !bytes.HasPrefix(b1, []byte("wsregistry-snapshot 2\n")) {
		t.Fatalf("snapshot starts %q", b1[:min(len(b1), 40)])
	}
	// Same state, different history of map layouts: same bytes.
	if b2 := snapshotBytes(t, roundTrip(t, a.f)); !bytes.Equal(b1, b2) {
		t.Fatalf("snapshots of equal states differ:\n%s\n%s", b1, b2)
	}
}

func TestSnapshot_PersistSeesStateAtSnapshotTime(t *testing.T) {
	a := populated(t)
	want := dump(a.f)
	s, err := a.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var buf bytes.Buffer
	sink := &memSink{w: &buf}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.Persist(sink); err != nil {
			t.Error(err)
		}
	}()
	for i := range uint64(200) { // Apply runs while Persist encodes
		a.ok(Register{Reg: reg("svc", "h:9", sid("q", 1, i), 1)}, Deregister{Session: sid("q", 1, i)})
	}
	wg.Wait()
	s.Release()
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
	g := New()
	if err := restoreBytes(g, buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	if got := dump(g); !reflect.DeepEqual(got, want) {
		t.Fatalf("persisted state is not the state at Snapshot time")
	}
}

func TestSnapshot_PersistCancelsSinkOnWriteError(t *testing.T) {
	a := populated(t)
	s, _ := a.f.Snapshot()
	sink := &memSink{w: failWriter{}}
	if err := s.Persist(sink); err == nil {
		t.Fatal("Persist succeeded on a failing sink")
	}
	if !sink.cancelled || sink.closed {
		t.Fatalf("sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
}

func TestRestore_RefusesBadSnapshotsAndKeepsState(t *testing.T) {
	good := string(snapshotBytes(t, populated(t).f))
	body := strings.TrimPrefix(good, "wsregistry-snapshot 2\n")
	tests := []struct {
		name    string
		data    string
		mention string
	}{
		{"empty", "", "empty snapshot"},
		{"garbage", "\x00\x01garbage\n{}", "not a wsregistry snapshot"},
		{"no newline", "wsregistry-snapshot 1", "no header line"},
		{"other magic", "rqlite-snapshot 1\n" + body, "not a wsregistry snapshot"},
		{"unknown version", "wsregistry-snapshot 3\n" + body, "unsupported snapshot format version 3 (this build reads 1 and 2)"},
		{"bad version", "wsregistry-snapshot one\n" + body, "bad snapshot version"},
		{"truncated", good[:len(good)-20], "decode snapshot"},
		{"trailing data", good + "{}", "trailing data"},
		{"invalid registration", "wsregistry-snapshot 1\n" + `{"namespaces":[{"name":"","addr":["h:1"],"node":["a"],"inc":[1],"seq":[1],"since":[1]}]}`, "registration 0: invalid command: empty namespace"},
		{"duplicate registration", "wsregistry-snapshot 1\n" + `{"namespaces":[{"name":"x","addr":["h:1","h:2"],"node":["a","a"],"inc":[1,1],"seq":[1,1],"since":[1,2]}]}`, "appears twice"},
		{"duplicate node", "wsregistry-snapshot 1\n" + `{"nodes":[{"id":"a"},{"id":"a"}]}`, "node \"a\" appears twice"},
		{"unknown result class", "wsregistry-snapshot 1\n" + `{"request_ids":["x"],"failed_requests":{"x":{"k":"weird"}}}`, "unknown result class"},
		{"failed request not remembered", "wsregistry-snapshot 1\n" + `{"failed_requests":{"x":{"k":"invalid"}}}`, "missing from request_ids"},
		{"ragged columns", "wsregistry-snapshot 1\n" + `{"namespaces":[{"name":"x","addr":["h:1"],"node":[],"inc":[1],"seq":[1],"since":[1]}]}`, "columns of different lengths"},
		{"bad tombstone", "wsregistry-snapshot 1\n" + `{"tombstones":["nope"]}`, "tombstone 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := populated(t)
			before := dump(a.f)
			called := false
			a.f.SetObserver(func(uint64, []Change) { called = true })
			err := restoreBytes(a.f, []byte(tt.data))
			if err == nil {
				t.Fatal("Restore accepted it")
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %q does not mention %q", err, tt.mention)
			}
			if after := dump(a.f); !reflect.DeepEqual(before, after) {
				t.Fatal("failed Restore changed the state")
			}
			if called {
				t.Fatal("observer called for a failed Restore")
			}
		})
	}
}

func TestRestore_UnknownVersionIsErrSnapshotVersion(t *testing.T) {
	err := restoreBytes(New(), []byte("wsregistry-snapshot 99\n{}"))
	if !errors.Is(err, ErrSnapshotVersion) {
		t.Fatalf("err = %v", err)
	}
}

func TestRestore_ReplacesPreviousState(t *testing.T) {
	empty := snapshotBytes(t, New())
	a := populated(t)
	if err := restoreBytes(a.f, empty); err != nil {
		t.Fatal(err)
	}
	if a.f.Stats() != (Stats{}) || a.f.AppliedIndex() != 0 {
		t.Fatalf("state left over: %+v", a.f.Stats())
	}
	if _, ok := a.f.PurgeMark("z"); ok {
		t.Fatal("purge mark left over")
	}
}

type memSink struct {
	w                 interface{ Write([]byte) (int, error) }
	closed, cancelled bool
}

func (s *memSink) Write(p []byte) (int, error) { return s.w.Write(p) }
func (s *memSink) Close() error                { s.closed = true; return nil }
func (s *memSink) Cancel() error               { s.cancelled = true; return nil }
func (s *memSink) ID() string                  { return "mem" }

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }
