package fsm

import (
	"encoding/json"
	"reflect"
	"testing"
)

// Strings in binary entries are coerced to valid UTF-8 as encoding/json does, so a node
// restored from a (JSON) snapshot holds what nodes that replayed the log hold.
func TestBinary_InvalidUTF8LikeJSON(t *testing.T) {
	for _, s := range []string{"ok", "a\xffb", "\xff\xfe", "\xe2\x82", "x\xef\xbf\xbdy", "\xed\xa0\x80"} {
		js, _ := json.Marshal(s)
		var want string
		if err := json.Unmarshal(js, &want); err != nil {
			t.Fatal(err)
		}
		r := binReader{b: appendString(nil, s)}
		if got := r.string(); got != want || r.err != nil {
			t.Errorf("%q: binary gives %q (%v), JSON gives %q", s, got, r.err, want)
		}
	}

	odd := sid("n\xff", 1, 1)
	entry := mustEncode(t, Batch{Commands: []Command{
		SetNode{RequestID: "r\xfe", Meta: NodeMeta{ID: "n\xff", Incarnation: 1}},
		Register{RequestID: "r\xfd", Reg: reg("svc", "h:1", odd, 5)},
	}})
	x := populated(t)
	x.raw(entry)
	y := New()
	if err := restoreBytes(y, snapshotBytes(t, x.f)); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(dump(y), dump(x.f)) {
		t.Fatalf("restored state differs from the replayed one:\n got %+v\nwant %+v", dump(y), dump(x.f))
	}
}

// strings3 reads what three string() calls read, valid or not, and fails alike when short.
func TestBinary_Strings3LikeThreeStrings(t *testing.T) {
	cases := [][3]string{{"svc", "10.0.0.1:80", "node1"}, {"", "", ""}, {"a\xffb", "ok", "n"}, {"s", "h:1", "n\xff"}}
	for _, c := range cases {
		in := appendString(appendString(appendString(nil, c[0]), c[1]), c[2])
		one, three := binReader{b: in}, binReader{b: in}
		want := [3]string{one.string(), one.string(), one.string()}
		var got [3]string
		got[0], got[1], got[2] = three.strings3()
		if got != want || three.err != nil || len(three.b) != 0 {
			t.Errorf("%q: strings3 gives %q (%v, %d left), string() gives %q", c, got, three.err, len(three.b), want)
		}
		short := binReader{b: in[:len(in)-1]}
		if a, b, c := short.strings3(); short.err == nil || a != "" || b != "" || c != "" {
			t.Errorf("%q cut short: %q %q %q, err %v; want an error", in, a, b, c, short.err)
		}
	}
}
