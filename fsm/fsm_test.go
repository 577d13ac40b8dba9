package fsm

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

var (
	sA1 = sid("a", 1, 1)
	sA2 = sid("a", 1, 2)
	sA9 = sid("a", 2, 1) // a later incarnation of node a
	sB1 = sid("b", 7, 1)
)

func TestRegister_Validation(t *testing.T) {
	good := reg("svc", "10.0.0.1:80", sA1, 5)
	tests := []struct {
		name string
		mod  func(*Registration)
		want error
	}{
		{"valid", func(*Registration) {}, nil},
		{"unicode namespace", func(r *Registration) { r.Namespace = "сервис/v1 ✓" }, nil},
		{"ipv6 address", func(r *Registration) { r.Address = "[::1]:8080" }, nil},
		{"hostname address", func(r *Registration) { r.Address = "agent.local:1" }, nil},
		{"namespace of max length", func(r *Registration) { r.Namespace = strings.Repeat("n", MaxNamespaceLen) }, nil},
		{"empty namespace", func(r *Registration) { r.Namespace = "" }, ErrInvalid},
		{"namespace too long", func(r *Registration) { r.Namespace = strings.Repeat("n", MaxNamespaceLen+1) }, ErrInvalid},
		{"namespace with newline", func(r *Registration) { r.Namespace = "a\nb" }, ErrInvalid},
		{"namespace with DEL", func(r *Registration) { r.Namespace = "a\x7f" }, ErrInvalid},
		{"namespace with NUL", func(r *Registration) { r.Namespace = "a\x00" }, ErrInvalid},
		{"empty address", func(r *Registration) { r.Address = "" }, ErrInvalid},
		{"address without port", func(r *Registration) { r.Address = "10.0.0.1" }, ErrInvalid},
		{"address without host", func(r *Registration) { r.Address = ":80" }, ErrInvalid},
		{"address port zero", func(r *Registration) { r.Address = "h:0" }, ErrInvalid},
		{"address port not numeric", func(r *Registration) { r.Address = "h:http" }, ErrInvalid},
		{"address port too big", func(r *Registration) { r.Address = "h:65536" }, ErrInvalid},
		{"address with control char", func(r *Registration) { r.Address = "h\n:80" }, ErrInvalid},
		{"session without node", func(r *Registration) { r.Session.Node = "" }, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newApplier(t)
			r := good
			tt.mod(&r)
			wantErrs(t, []error{r.Validate()}, tt.want)
			err := a.one(Register{Reg: r})
			wantErrs(t, []error{err}, tt.want)
			want := 0
			if tt.want == nil {
				want = 1
			}
			if got := a.f.Stats().Registrations; got != want {
				t.Fatalf("registrations = %d, want %d", got, want)
			}
			if tt.want != nil && !strings.HasPrefix(err.Error(), "invalid command: ") {
				t.Fatalf("error %q does not carry a detail", err)
			}
		})
	}
}

func TestValidate_RefusesInvalidUTF8(t *testing.T) {
	// JSON decoding already replaces invalid UTF-8, so only Validate (used by
	// proposers and Restore) can see it.
	if err := reg("a\xff", "h:1", sA1, 1).Validate(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Validate = %v", err)
	}
	if err := reg("a", "h\xff:1", sA1, 1).Validate(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Validate = %v", err)
	}
}

func TestRegister_AddsInstanceAndIndexes(t *testing.T) {
	a := newApplier(t)
	r := reg("svc", "10.0.0.1:80", sA1, 5)
	a.ok(Register{Reg: r})
	if got := a.f.Instances("svc"); !reflect.DeepEqual(got, []Registration{r}) {
		t.Fatalf("Instances = %v", got)
	}
	if got := a.f.SessionsOf("a"); !reflect.DeepEqual(got, []SessionID{sA1}) {
		t.Fatalf("SessionsOf = %v", got)
	}
	if got, want := a.f.Stats(), (Stats{Registrations: 1, Namespaces: 1, Sessions: 1}); got != want {
		t.Fatalf("Stats = %+v, want %+v", got, want)
	}
	if got := a.f.AppliedIndex(); got != 1 {
		t.Fatalf("AppliedIndex = %d", got)
	}
}

func TestRegister_SameSessionTwiceIsNoop(t *testing.T) {
	a := newApplier(t)
	a.ok(Register{Reg: reg("svc", "10.0.0.1:80", sA1, 5)})
	before := dumpNoIndex(a.f)
	// Same (namespace, session), later time and even another address: the
	// original registration and its Since stay.
	a.ok(Register{Reg: reg("svc", "10.0.0.2:80", sA1, 99)})
	if after := dumpNoIndex(a.f); !reflect.DeepEqual(before, after) {
		t.Fatalf("state changed:\n%+v\n%+v", before, after)
	}
}

func TestRegister_OneSessionSeveralNamespaces(t *testing.T) {
	a := newApplier(t)
	a.ok(Register{Reg: reg("x", "h:1", sA1, 1)}, Register{Reg: reg("y", "h:1", sA1, 1)})
	if got := a.f.Stats(); got.Registrations != 2 || got.Sessions != 1 || got.Namespaces != 2 {
		t.Fatalf("Stats = %+v", got)
	}
	a.ok(Deregister{Session: sA1})
	if got := a.f.Stats(); got != (Stats{}) {
		t.Fatalf("after deregister Stats = %+v", got)
	}
}

func TestInstances_StableOrderBySinceAddressSession(t *testing.T) {
	a := newApplier(t)
	r1 := reg("svc", "b:1", sid("n", 1, 3), 10)
	r2 := reg("svc", "a:1", sid("n", 1, 2), 20)
	r3 := reg("svc", "b:1", sid("n", 1, 1), 20) // same Since, address after r2
	r4 := reg("svc", "b:1", sid("n", 1, 4), 20) // same Since and address, later session
	a.ok(Register{Reg: r4}, Register{Reg: r3}, Register{Reg: r2}, Register{Reg: r1})
	want := []Registration{r1, r2, r3, r4}
	if got := a.f.Instances("svc"); !reflect.DeepEqual(got, want) {
		t.Fatalf("Instances =\n%v\nwant\n%v", got, want)
	}
	for i := range uint64(9) {
		got, ok := a.f.Pick("svc", i)
		if !ok || got != want[i%4] {
			t.Fatalf("Pick(%d) = %v %v, want %v", i, got, ok, want[i%4])
		}
	}
	if _, ok := a.f.Pick("nope", 0); ok {
		t.Fatal("Pick of unknown namespace found something")
	}
}

func TestInstances_ReturnsCopy(t *testing.T) {
	a := newApplier(t)
	a.ok(Register{Reg: reg("svc", "h:1", sA1, 1)})
	got := a.f.Instances("svc")
	got[0].Address = "mutated:1"
	if r, _ := a.f.Pick("svc", 0); r.Address != "h:1" {
		t.Fatalf("caller mutated the FSM: %v", r)
	}
}

func TestDeregister_RemovesAndRefusesLaterRegister(t *testing.T) {
	a := newApplier(t)
	a.ok(Register{Reg: reg("svc", "h:1", sA1, 1)}, Register{Reg: reg("svc", "h:2", sA2, 1)})
	a.ok(Deregister{Session: sA1})
	if got := a.f.Instances("svc"); len(got) != 1 || got[0].Session != sA2 {
		t.Fatalf("Instances = %v", got)
	}
	err := a.one(Register{Reg: reg("svc", "h:1", sA1, 2)})
	wantErrs(t, []error{err}, ErrSessionClosed)
	if n := a.f.Stats().Registrations; n != 1 {
		t.Fatalf("registrations = %d", n)
	}
}

func TestDeregister_BeforeRegisterLeavesTombstone(t *testing.T) {
	// A forwarded Register can arrive after the disconnect's Deregister.
	a := newApplier(t)
	a.ok(Deregister{Session: sA1})
	wantErrs(t, a.apply(Register{Reg: reg("svc", "h:1", sA1, 1)}), ErrSessionClosed)
	if n := a.f.Stats().Registrations; n != 0 {
		t.Fatalf("registrations = %d", n)
	}
}

func TestDeregister_EmptyNodeIsInvalid(t *testing.T) {
	a := newApplier(t)
	wantErrs(t, a.apply(Deregister{Session: SessionID{Incarnation: 1}}), ErrInvalid)
}

func TestTombstones_OldestForgottenBeyondLimit(t *testing.T) {
	a := newApplier(t)
	a.f = newFSM(8, 2)
	a.ok(Deregister{Session: sid("a", 1, 1)}, Deregister{Session: sid("a", 1, 2)}, Deregister{Session: sid("a", 1, 3)})
	// Session 1 fell out of the FIFO, so its late Register is accepted.
	a.ok(Register{Reg: reg("svc", "h:1", sid("a", 1, 1), 1)})
	wantErrs(t, a.apply(Register{Reg: reg("svc", "h:1", sid("a", 1, 2), 1)}), ErrSessionClosed)
	wantErrs(t, a.apply(Register{Reg: reg("svc", "h:1", sid("a", 1, 3), 1)}), ErrSessionClosed)
}

func TestRequestID_RetryReturnsFirstResultAndChangesNothing(t *testing.T) {
	tests := []struct {
		name  string
		setup []Command
		cmd   Command
		later []Command // applied between the first try and the retry
		want  error
	}{
		{"register ok", nil, Register{RequestID: "r1", Reg: reg("svc", "h:1", sA1, 1)},
			[]Command{Deregister{Session: sA1}}, nil},
		{"register invalid", nil, Register{RequestID: "r1", Reg: reg("", "h:1", sA1, 1)}, nil, ErrInvalid},
		{"register closed", []Command{Deregister{Session: sA1}}, Register{RequestID: "r1", Reg: reg("svc", "h:1", sA1, 1)}, nil, ErrSessionClosed},
		{"deregister", []Command{Register{Reg: reg("svc", "h:1", sA1, 1)}}, Deregister{RequestID: "r1", Session: sA1},
			nil, nil},
		{"purge", []Command{Register{Reg: reg("svc", "h:1", sA1, 1)}}, PurgeNode{RequestID: "r1", Node: "a"}, nil, nil},
		{"set node", nil, SetNode{RequestID: "r1", Meta: NodeMeta{ID: "a", Incarnation: 3}},
			[]Command{SetNode{Meta: NodeMeta{ID: "a", WSAddr: "x:1", Incarnation: 3}}}, nil},
		{"set node stale", []Command{SetNode{Meta: NodeMeta{ID: "a", Incarnation: 3}}}, SetNode{RequestID: "r1", Meta: NodeMeta{ID: "a", Incarnation: 2}}, nil, ErrInvalid},
		{"remove node", []Command{SetNode{Meta: NodeMeta{ID: "a", Incarnation: 3}}}, RemoveNode{RequestID: "r1", Node: "a"},
			[]Command{SetNode{Meta: NodeMeta{ID: "a", Incarnation: 4}}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newApplier(t)
			for _, c := range tt.setup {
				a.apply(c)
			}
			first := a.apply(tt.cmd)
			wantErrs(t, first, tt.want)
			for _, c := range tt.later {
				a.ok(c)
			}
			before := dumpNoIndex(a.f)
			again := a.apply(tt.cmd)
			if !reflect.DeepEqual(errStrings(first), errStrings(again)) {
				t.Fatalf("retry result %v, first %v", again, first)
			}
			wantErrs(t, again, tt.want)
			if after := dumpNoIndex(a.f); !reflect.DeepEqual(before, after) {
				t.Fatalf("retry changed state:\n%+v\n%+v", before, after)
			}
			// The memory survives a snapshot.
			g := roundTrip(t, a.f)
			b := &applier{t: t, f: g, index: a.index}
			if res := b.apply(tt.cmd); !reflect.DeepEqual(errStrings(first), errStrings(res)) {
				t.Fatalf("retry after restore %v, first %v", res, first)
			}
			if after := dumpNoIndex(g); !reflect.DeepEqual(before, after) {
				t.Fatalf("retry after restore changed state")
			}
		})
	}
}

func TestRequestID_OldestForgottenBeyondLimit(t *testing.T) {
	a := newApplier(t)
	a.f = newFSM(2, 8)
	a.ok(SetNode{RequestID: "r1", Meta: NodeMeta{ID: "n", Incarnation: 1}},
		SetNode{RequestID: "r2", Meta: NodeMeta{ID: "n", Incarnation: 2}},
		SetNode{RequestID: "r3", Meta: NodeMeta{ID: "n", Incarnation: 3}})
	// r1 was forgotten: it now runs, and is refused as stale.
	wantErrs(t, a.apply(SetNode{RequestID: "r1", Meta: NodeMeta{ID: "n", Incarnation: 1}}), ErrInvalid)
	// r3 is still remembered: its success is replayed.
	wantErrs(t, a.apply(SetNode{RequestID: "r3", Meta: NodeMeta{ID: "n", Incarnation: 1}}), nil)
}

func TestPurgeNode(t *testing.T) {
	tests := []struct {
		name      string
		upTo      uint64
		meta      *NodeMeta
		wantLive  []SessionID
		wantMark  uint64
		wantNoMrk bool
	}{
		{"explicit mark removes older incarnations", 1, nil, []SessionID{sA9}, 1, false},
		{"zero means every incarnation seen (sessions)", 0, nil, nil, 2, false},
		{"zero uses metadata incarnation when higher", 0, &NodeMeta{ID: "a", Incarnation: 5}, nil, 5, false},
		{"explicit mark above everything", 10, nil, nil, 10, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newApplier(t)
			if tt.meta != nil {
				a.ok(SetNode{Meta: *tt.meta})
			}
			a.ok(Register{Reg: reg("svc", "h:1", sA1, 1)}, Register{Reg: reg("svc", "h:2", sA2, 1)},
				Register{Reg: reg("svc", "h:3", sA9, 1)}, Register{Reg: reg("svc", "h:4", sB1, 1)})
			a.ok(PurgeNode{Node: "a", UpToIncarnation: tt.upTo})
			got := a.f.SessionsOf("a")
			if len(got) == 0 {
				got = nil
			}
			if !reflect.DeepEqual(got, tt.wantLive) {
				t.Fatalf("SessionsOf(a) = %v, want %v", got, tt.wantLive)
			}
			if got := a.f.SessionsOf("b"); len(got) != 1 {
				t.Fatalf("other node touched: %v", got)
			}
			mark, ok := a.f.PurgeMark("a")
			if !ok || mark != tt.wantMark {
				t.Fatalf("PurgeMark = %d %v, want %d", mark, ok, tt.wantMark)
			}
			// A Register from a purged incarnation is refused, a newer one is not.
			wantErrs(t, a.apply(Register{Reg: reg("svc", "h:9", sid("a", mark, 77), 1)}), ErrSessionClosed)
			wantErrs(t, a.apply(Register{Reg: reg("svc", "h:9", sid("a", mark+1, 77), 1)}), nil)
			checkInvariants(t, a.f)
		})
	}
}

func TestPurgeNode_MarkNeverDecreases(t *testing.T) {
	a := newApplier(t)
	a.ok(PurgeNode{Node: "a", UpToIncarnation: 5}, PurgeNode{Node: "a", UpToIncarnation: 3})
	if m, _ := a.f.PurgeMark("a"); m != 5 {
		t.Fatalf("mark = %d, want 5", m)
	}
}

func TestPurgeNode_UnknownNodeWithZeroLeavesNoMark(t *testing.T) {
	a := newApplier(t)
	a.ok(PurgeNode{Node: "ghost"})
	if _, ok := a.f.PurgeMark("ghost"); ok {
		t.Fatal("mark set for a node never seen")
	}
	wantErrs(t, a.apply(PurgeNode{}), ErrInvalid)
}

func TestSetNode_UpsertsAndRefusesOlderIncarnation(t *testing.T) {
	a := newApplier(t)
	m1 := NodeMeta{ID: "a", WSAddr: "a:8427", HTTPAddr: "a:8428", RaftAddr: "a:8429", Incarnation: 1}
	m2 := m1
	m2.WSAddr, m2.Incarnation = "a2:8427", 2
	a.ok(SetNode{Meta: m1}, SetNode{Meta: NodeMeta{ID: "0"}}, SetNode{Meta: m2})
	if got, ok := a.f.Node("a"); !ok || got != m2 {
		t.Fatalf("Node(a) = %v %v", got, ok)
	}
	wantErrs(t, a.apply(SetNode{Meta: m1}), ErrInvalid)
	wantErrs(t, a.apply(SetNode{Meta: NodeMeta{WSAddr: "x:1"}}), ErrInvalid)
	if got := a.f.Nodes(); len(got) != 2 || got[0].ID != "0" || got[1] != m2 {
		t.Fatalf("Nodes = %v", got)
	}
}

func TestRemoveNode_ForgetsMetadataAndPurgesSessions(t *testing.T) {
	a := newApplier(t)
	a.ok(SetNode{Meta: NodeMeta{ID: "a", Incarnation: 2}},
		Register{Reg: reg("svc", "h:1", sA1, 1)}, Register{Reg: reg("svc", "h:3", sA9, 1)},
		Register{Reg: reg("svc", "h:4", sB1, 1)})
	a.ok(RemoveNode{Node: "a"})
	if _, ok := a.f.Node("a"); ok {
		t.Fatal("metadata kept")
	}
	if got := a.f.SessionsOf("a"); len(got) != 0 {
		t.Fatalf("sessions kept: %v", got)
	}
	// A register still in flight from the removed node is refused; the node
	// may rejoin with a newer incarnation.
	wantErrs(t, a.apply(Register{Reg: reg("svc", "h:1", sid("a", 2, 5), 1)}), ErrSessionClosed)
	a.ok(SetNode{Meta: NodeMeta{ID: "a", Incarnation: 3}}, Register{Reg: reg("svc", "h:1", sid("a", 3, 1), 1)})
	wantErrs(t, a.apply(RemoveNode{}), ErrInvalid)
	checkInvariants(t, a.f)
}

func TestBatch_ResultsAlignedAndAppliedInOrder(t *testing.T) {
	a := newApplier(t)
	errs := a.apply(Batch{Commands: []Command{
		Register{Reg: reg("svc", "h:1", sA1, 1)},
		Register{Reg: reg("", "h:1", sA2, 1)},
		Deregister{Session: sA1},
		Register{Reg: reg("svc", "h:1", sA1, 1)},
		Unknown{T: IgnoreIfUnknown | 42, Body: []byte(`{"x":1}`)},
		SetNode{Meta: NodeMeta{ID: "a", Incarnation: 1}},
	}})
	wantErrs(t, errs, nil, ErrInvalid, nil, ErrSessionClosed, nil, nil)
	if got := a.f.Stats(); got != (Stats{Nodes: 1}) {
		t.Fatalf("Stats = %+v", got)
	}
	if got := a.f.AppliedIndex(); got != 1 {
		t.Fatalf("AppliedIndex = %d", got)
	}
}

func TestBatch_EmptyHasNoResults(t *testing.T) {
	a := newApplier(t)
	if errs := a.apply(Batch{}); len(errs) != 0 {
		t.Fatalf("results = %v", errs)
	}
}

func TestApply_UnknownTypeWithIgnoreBitIsSkipped(t *testing.T) {
	a := newApplier(t)
	a.ok(Register{Reg: reg("svc", "h:1", sA1, 1)})
	before := dumpNoIndex(a.f)
	wantErrs(t, a.raw([]byte("\xa0anything, not even JSON")), nil)
	if after := dumpNoIndex(a.f); !reflect.DeepEqual(before, after) {
		t.Fatal("state changed")
	}
	if got := a.f.AppliedIndex(); got != 2 {
		t.Fatalf("AppliedIndex = %d, want 2", got)
	}
}

func TestApply_UndecodableEntryPanics(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"unknown type without ignore bit", []byte{0x20, '{', '}'}},
		{"bad json", []byte{byte(TypeRegister), '{'}},
		{"wrong json type", []byte("\x01{\"reg\":{\"since\":\"x\"}}")},
		{"nested batch", []byte("\x05[{\"t\":5,\"b\":[]}]")},
		{"unknown type in batch", []byte("\x05[{\"t\":33,\"b\":{}}]")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := New()
			defer func() {
				r := recover()
				if r == nil {
					t.Fatal("Apply did not panic")
				}
				if msg, _ := r.(string); !strings.Contains(msg, "log entry 7") {
					t.Fatalf("panic message %q does not name the entry", r)
				}
			}()
			f.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: tt.data})
		})
	}
}

func TestApply_NonCommandLogOnlyAdvancesIndex(t *testing.T) {
	f := New()
	f.Apply(&raft.Log{Index: 3, Type: raft.LogNoop})
	if f.AppliedIndex() != 3 {
		t.Fatalf("AppliedIndex = %d", f.AppliedIndex())
	}
}

func TestObserver_SeesChangesAfterEachApply(t *testing.T) {
	a := newApplier(t)
	type call struct {
		index   uint64
		changes []Change
	}
	var calls []call
	a.f.SetObserver(func(i uint64, ch []Change) {
		// Outside the lock: reading must not deadlock.
		_ = a.f.Stats()
		calls = append(calls, call{i, ch})
	})
	a.ok(SetNode{Meta: NodeMeta{ID: "a", Incarnation: 1}},
		Register{Reg: reg("svc", "h:1", sA1, 1)},
		Register{Reg: reg("svc", "h:1", sA1, 1)}, // no-op: no change
		RemoveNode{Node: "a"})
	if err := restoreBytes(a.f, snapshotBytes(t, a.f)); err != nil {
		t.Fatal(err)
	}
	s := sA1.String()
	want := []call{
		{1, []Change{{Kind: ChangeNode, Node: "a"}}},
		{2, []Change{{Kind: ChangeRegister, Namespace: "svc", Address: "h:1", Session: s, Node: "a"}}},
		{3, nil},
		{4, []Change{{Kind: ChangeDeregister, Namespace: "svc", Address: "h:1", Session: s, Node: "a"}, {Kind: ChangeNodeRemoved, Node: "a"}}},
		{4, []Change{{Kind: ChangeReset}}},
	}
	if !reflect.DeepEqual(calls, want) {
		t.Fatalf("calls =\n%+v\nwant\n%+v", calls, want)
	}
}

func TestSessionID_StringRoundTrips(t *testing.T) {
	for _, s := range []SessionID{sA1, sid("pod-0", 1700000000000, 42), sid("a/b", 0, 0)} {
		got, err := ParseSessionID(s.String())
		if err != nil || got != s {
			t.Fatalf("ParseSessionID(%q) = %v, %v", s.String(), got, err)
		}
	}
	if got := sid("n", 2, 3).String(); got != "n/2/3" {
		t.Fatalf("String = %q", got)
	}
	for _, bad := range []string{"", "n", "n/1", "/1/2", "n/x/2", "n/1/-2", "n/1/2/"} {
		if _, err := ParseSessionID(bad); err == nil {
			t.Fatalf("ParseSessionID(%q) accepted", bad)
		}
	}
}

func TestErrors_AreClassifiedWithErrorsIs(t *testing.T) {
	a := newApplier(t)
	err := a.one(Register{Reg: reg("", "h:1", sA1, 1)})
	if !errors.Is(err, ErrInvalid) || errors.Is(err, ErrSessionClosed) {
		t.Fatalf("err = %v", err)
	}
}
