package fsm

import (
	"reflect"
	"testing"
)

// addressesOf lists ns's instances as "owner@address".
func addressesOf(f *FSM, ns string) []string {
	var out []string
	for _, r := range f.Instances(ns) {
		out = append(out, r.Session.Node+"@"+r.Address)
	}
	return out
}

func TestAdopt_MovesAnsweringSessionsToTheClusterAndPurgesTheRest(t *testing.T) {
	a := newApplier(t)
	alive, dead, other := sid("a", 1, 1), sid("a", 1, 2), sid("b", 1, 1)
	a.ok(Register{Reg: reg("svc", "h:1", alive, 10)}, Register{Reg: reg("db", "h:1", alive, 11)},
		Register{Reg: reg("svc", "h:2", dead, 12)}, Register{Reg: reg("svc", "h:3", other, 13)})
	var changes []Change
	a.f.SetObserver(func(_ uint64, ch []Change) { changes = append(changes, ch...) })

	a.ok(Adopt{RequestID: "r1", Node: "a", Keep: []SessionID{alive}})

	if got := a.f.SessionsOf("a"); len(got) != 0 {
		t.Fatalf("silent node still owns %v", got)
	}
	held := a.f.SessionsOf(ClusterOwner)
	if len(held) != 1 {
		t.Fatalf("cluster holds %v, want one session", held)
	}
	if got, want := addressesOf(a.f, "svc"), []string{"@cluster@h:1", "b@h:3"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("svc = %v, want %v", got, want)
	}
	if got := a.f.Instances("db"); len(got) != 1 || got[0].Since != 11 || got[0].Session != held[0] {
		t.Fatalf("db = %+v: want the adopted registration with its Since kept", got)
	}
	if mark, _ := a.f.PurgeMark("a"); mark != 1 {
		t.Fatalf("purge mark %d, want 1", mark)
	}
	// Watchers see the move (register under the cluster, deregister of the old session)
	// and the purge of the dead agent.
	var reg, dereg int
	for _, c := range changes {
		switch c.Kind {
		case ChangeRegister:
			reg++
		case ChangeDeregister:
			dereg++
		}
	}
	if reg != 2 || dereg != 3 {
		t.Fatalf("changes %+v: want 2 registers, 3 deregisters", changes)
	}
	// A retry with the same request id changes nothing.
	before := dumpNoIndex(a.f)
	a.ok(Adopt{RequestID: "r1", Node: "a", Keep: []SessionID{alive}})
	if !reflect.DeepEqual(before, dumpNoIndex(a.f)) {
		t.Fatal("a retried Adopt changed the state")
	}
	checkInvariants(t, a.f)
	if got := roundTrip(t, a.f); !reflect.DeepEqual(dump(got), dump(a.f)) {
		t.Fatal("snapshot round trip lost adopted registrations")
	}
}

func TestAdopt_RegistrationThroughANodeSupersedesTheAdoptedOne(t *testing.T) {
	a := newApplier(t)
	a.ok(Register{Reg: reg("svc", "h:1", sid("a", 1, 1), 10)}, Register{Reg: reg("db", "h:1", sid("a", 1, 1), 10)})
	a.ok(Adopt{Node: "a", Keep: []SessionID{sid("a", 1, 1)}})

	// The agent reconnects through node b: svc moves in the same entry, db stays adopted
	// until it says online for it too.
	a.ok(Register{Reg: reg("svc", "h:1", sid("b", 1, 1), 20)})
	if got, want := addressesOf(a.f, "svc"), []string{"b@h:1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("svc = %v, want %v", got, want)
	}
	if got, want := addressesOf(a.f, "db"), []string{"@cluster@h:1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("db = %v, want %v", got, want)
	}
	// Another address in the same namespace does not supersede.
	a.ok(Register{Reg: reg("db", "h:2", sid("b", 1, 2), 21)})
	if n := len(a.f.Instances("db")); n != 2 {
		t.Fatalf("db has %d instances, want 2", n)
	}
	a.ok(Register{Reg: reg("db", "h:1", sid("b", 1, 1), 22)})
	if got := a.f.SessionsOf(ClusterOwner); len(got) != 0 {
		t.Fatalf("cluster still holds %v after the agent registered everything again", got)
	}
	checkInvariants(t, a.f)
}

func TestAdopt_SkipsWhatIsServedElsewhereAndWhatIsNotTheNodes(t *testing.T) {
	a := newApplier(t)
	old, newer := sid("a", 1, 1), sid("a", 5, 1)
	a.ok(Register{Reg: reg("svc", "h:1", old, 10)}, Register{Reg: reg("db", "h:1", old, 10)},
		// The agent already registered svc through b (an SDK agent that failed over).
		Register{Reg: reg("svc", "h:1", sid("b", 1, 1), 11)},
		Register{Reg: reg("svc", "h:5", newer, 12)})
	a.ok(Adopt{Node: "a", UpToIncarnation: 4, Keep: []SessionID{old, newer, sid("b", 1, 1), sid("a", 1, 99)}})

	if got, want := addressesOf(a.f, "svc"), []string{"b@h:1", "a@h:5"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("svc = %v, want %v (no duplicate of h:1; the newer incarnation untouched)", got, want)
	}
	if got, want := addressesOf(a.f, "db"), []string{"@cluster@h:1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("db = %v, want %v", got, want)
	}
	checkInvariants(t, a.f)
}

func TestAdopt_SessionsAreUniquePerEntryAndDeregisterEndsThem(t *testing.T) {
	a := newApplier(t)
	a.ok(Register{Reg: reg("svc", "h:1", sid("a", 1, 1), 1)}, Register{Reg: reg("svc", "h:2", sid("b", 1, 1), 1)})
	// Two silent members adopted in one batch get distinct sessions.
	a.ok(Batch{Commands: []Command{
		Adopt{Node: "a", Keep: []SessionID{sid("a", 1, 1)}},
		Adopt{Node: "b", Keep: []SessionID{sid("b", 1, 1)}},
	}})
	held := a.f.SessionsOf(ClusterOwner)
	if len(held) != 2 || held[0] == held[1] {
		t.Fatalf("cluster holds %v, want two distinct sessions", held)
	}
	// The leader found the first one dead.
	a.ok(Deregister{Session: held[0]})
	if got := addressesOf(a.f, "svc"); len(got) != 1 {
		t.Fatalf("svc = %v after deregistering one adopted session", got)
	}
	checkInvariants(t, a.f)
}

func TestAdopt_RefusesTheReservedOwnerAndEmptyNodes(t *testing.T) {
	a := newApplier(t)
	wantErrs(t, a.apply(Register{Reg: reg("svc", "h:1", sid(ClusterOwner, 1, 1), 1)}), ErrInvalid)
	wantErrs(t, a.apply(Adopt{Node: ""}), ErrInvalid)
	wantErrs(t, a.apply(Adopt{Node: ClusterOwner}), ErrInvalid)
}

func TestAdopt_BinaryAndJSONRoundTrip(t *testing.T) {
	c := Adopt{RequestID: "r", Node: "a", UpToIncarnation: 7, Keep: []SessionID{sid("a", 7, 1), sid("a", 3, 2)}}
	for _, enc := range []func(Command) ([]byte, error){Encode, EncodeJSON} {
		b, err := enc(Batch{Commands: []Command{c}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, Batch{Commands: []Command{c}}) {
			t.Fatalf("decoded %#v, want %#v", got, c)
		}
	}
	// A count of sessions larger than the body is refused, not allocated.
	body, _ := adoptKind.appendBinary(nil, Adopt{Node: "a"})
	body[len(body)-1] = 0x7f
	if _, err := adoptKind.decodeBinary(body); err == nil {
		t.Fatal("a truncated session list decoded")
	}
}
