package fsm

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"slices"
	"testing"

	"github.com/hashicorp/raft"
)

func sid(node string, inc, seq uint64) SessionID {
	return SessionID{Node: node, Incarnation: inc, Seq: seq}
}

func reg(ns, addr string, s SessionID, since int64) Registration {
	return Registration{Namespace: ns, Address: addr, Session: s, Since: since}
}

func mustEncode(t testing.TB, cmd Command) []byte {
	t.Helper()
	b, err := Encode(cmd)
	if err != nil {
		t.Fatalf("Encode(%#v): %v", cmd, err)
	}
	return b
}

// applier feeds commands to an FSM with increasing log indexes.
type applier struct {
	t     testing.TB
	f     *FSM
	index uint64
}

func newApplier(t testing.TB) *applier { return &applier{t: t, f: New()} }

func (a *applier) raw(data []byte) []error {
	a.t.Helper()
	a.index++
	res := a.f.Apply(&raft.Log{Index: a.index, Term: 1, Type: raft.LogCommand, Data: data})
	errs, ok := res.([]error)
	if !ok {
		a.t.Fatalf("Apply returned %T, want []error", res)
	}
	return errs
}

func (a *applier) apply(cmd Command) []error {
	a.t.Helper()
	return a.raw(mustEncode(a.t, cmd))
}

// one applies a non-batch command and returns its single result.
func (a *applier) one(cmd Command) error {
	a.t.Helper()
	errs := a.apply(cmd)
	if len(errs) != 1 {
		a.t.Fatalf("Apply(%T) returned %d results, want 1", cmd, len(errs))
	}
	return errs[0]
}

func (a *applier) ok(cmds ...Command) {
	a.t.Helper()
	for _, c := range cmds {
		for i, err := range a.apply(c) {
			if err != nil {
				a.t.Fatalf("Apply(%#v) result %d: %v", c, i, err)
			}
		}
	}
}

// dump is the full state in a canonical form.
func dump(f *FSM) *snapshotData {
	f.mu.RLock()
	d := f.st.export()
	f.mu.RUnlock()
	d.sortForOutput()
	return d
}

// dumpNoIndex is dump without the applied index, for "changes nothing".
func dumpNoIndex(f *FSM) *snapshotData {
	d := dump(f)
	d.Index = 0
	return d
}

func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	s, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	defer s.Release()
	var buf bytes.Buffer
	if err := s.(*snapshot).write(&buf); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	return buf.Bytes()
}

func restoreBytes(f *FSM, b []byte) error {
	return f.Restore(io.NopCloser(bytes.NewReader(b)))
}

// roundTrip snapshots f and restores it into a fresh FSM with the same limits.
func roundTrip(t testing.TB, f *FSM) *FSM {
	t.Helper()
	g := newFSM(f.maxRequests, f.maxTombstones)
	if err := restoreBytes(g, snapshotBytes(t, f)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	return g
}

// checkInvariants recomputes the derived indexes from the namespaces.
func checkInvariants(t testing.TB, f *FSM) {
	t.Helper()
	f.mu.RLock()
	defer f.mu.RUnlock()
	st := f.st
	sessions := map[SessionID][]string{}
	byNode := map[string]map[SessionID]struct{}{}
	n := 0
	for ns, list := range st.namespaces {
		if len(list) == 0 {
			t.Fatalf("namespace %q kept with no instances", ns)
		}
		if !slices.IsSortedFunc(list, compareInstance) {
			t.Fatalf("namespace %q not in instance order", ns)
		}
		for _, r := range list {
			if r.Namespace != ns {
				t.Fatalf("registration %+v filed under %q", r, ns)
			}
			if slices.Contains(sessions[r.Session], ns) {
				t.Fatalf("session %s twice in %q", r.Session, ns)
			}
			sessions[r.Session] = append(sessions[r.Session], ns)
			if byNode[r.Session.Node] == nil {
				byNode[r.Session.Node] = map[SessionID]struct{}{}
			}
			byNode[r.Session.Node][r.Session] = struct{}{}
			n++
		}
	}
	if n != st.regCount {
		t.Fatalf("regCount %d, counted %d", st.regCount, n)
	}
	norm := func(m map[SessionID][]string) map[SessionID][]string {
		out := map[SessionID][]string{}
		for k, v := range m {
			out[k] = slices.Sorted(slices.Values(v))
		}
		return out
	}
	if !reflect.DeepEqual(norm(sessions), norm(st.sessions)) {
		t.Fatalf("sessions index out of sync:\n got %v\nwant %v", st.sessions, sessions)
	}
	if !reflect.DeepEqual(byNode, st.byNode) {
		t.Fatalf("byNode index out of sync:\n got %v\nwant %v", st.byNode, byNode)
	}
	for s := range st.sessions {
		if mark, ok := st.purged[s.Node]; ok && s.Incarnation <= mark {
			t.Fatalf("live session %s at or below purge mark %d", s, mark)
		}
		if st.tombstones.has(s) {
			t.Fatalf("live session %s is tombstoned", s)
		}
	}
}

// wantErrs compares results with expected sentinels (nil = success).
func wantErrs(t testing.TB, got []error, want ...error) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d results %v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if (want[i] == nil) != (got[i] == nil) || (want[i] != nil && !errors.Is(got[i], want[i])) {
			t.Fatalf("result %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func errStrings(errs []error) []string {
	out := make([]string, len(errs))
	for i, e := range errs {
		if e != nil {
			out[i] = e.Error()
		}
	}
	return out
}
