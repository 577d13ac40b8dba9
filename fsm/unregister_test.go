package fsm

import (
	"reflect"
	"testing"
)

func TestUnregister_RemovesOneNamespaceOfASession(t *testing.T) {
	a := newApplier(t)
	s := sid("n1", 1, 1)
	other := sid("n1", 1, 2)
	a.ok(
		Register{Reg: reg("keep", "10.0.0.1:1", s, 1)},
		Register{Reg: reg("drop", "10.0.0.1:1", s, 1)},
		Register{Reg: reg("drop", "10.0.0.2:1", other, 1)},
	)
	a.ok(Unregister{RequestID: "u1", Session: s, Namespace: "drop"})
	if got := a.f.NamespacesOf(s); !reflect.DeepEqual(got, []string{"keep"}) {
		t.Fatalf("session holds %v, want [keep]", got)
	}
	if inst := a.f.Instances("drop"); len(inst) != 1 || inst[0].Session != other {
		t.Fatalf("drop's instances: %v", inst)
	}
	checkInvariants(t, a.f)
	before := a.f.Namespaces()
	a.ok(Unregister{RequestID: "u1", Session: s, Namespace: "drop"}) // retried
	a.ok(Unregister{Session: s, Namespace: "never"})                 // unknown pair
	a.ok(Unregister{Session: sid("n9", 1, 1), Namespace: "keep"})    // unknown session
	if got := a.f.Namespaces(); !reflect.DeepEqual(got, before) {
		t.Fatal("a repeated or unknown Unregister changed the state")
	}
	a.ok(Unregister{Session: s, Namespace: "keep"})
	if len(a.f.SessionsOf("n1")) != 1 {
		t.Fatalf("a session with nothing left is still live: %v", a.f.SessionsOf("n1"))
	}
	checkInvariants(t, a.f)
	if g := roundTrip(t, a.f); !reflect.DeepEqual(dump(g), dump(a.f)) {
		t.Fatal("snapshot/restore after Unregister differs")
	}
	if err := a.one(Unregister{Namespace: "x"}); err == nil {
		t.Fatal("Unregister with an empty session node accepted")
	}
}
