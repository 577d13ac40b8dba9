package fsm

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestEncodeDecode_RoundTripsEveryCommand(t *testing.T) {
	cmds := []Command{
		Register{RequestID: "r", Reg: reg("svc", "h:1", sA1, 1700000000000)},
		Register{Reg: reg("svc", "[::1]:9", sA2, -1)},
		Deregister{RequestID: "r2", Session: sA1},
		PurgeNode{RequestID: "r3", Node: "a", UpToIncarnation: 4},
		SetNode{Meta: NodeMeta{ID: "a", WSAddr: "a:1", HTTPAddr: "a:2", RaftAddr: "a:3", Incarnation: 9}},
		RemoveNode{RequestID: "r4", Node: "a"},
		Unknown{T: IgnoreIfUnknown | 1, Body: []byte(`{"future":true}`)},
		Batch{Commands: []Command{}},
		Batch{Commands: []Command{
			Register{Reg: reg("svc", "h:1", sA1, 1)},
			Deregister{Session: sA1},
			Unknown{T: 0x90, Body: []byte(`[1,2]`)},
		}},
	}
	for _, c := range cmds {
		b, err := Encode(c)
		if err != nil {
			t.Fatalf("Encode(%#v): %v", c, err)
		}
		want := c.Type()
		if want == TypeBatch {
			want = TypeBinaryBatch
		}
		if CommandType(b[0]) != want {
			t.Fatalf("type byte %d, want %d", b[0], want)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(%q): %v", b, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("Decode(Encode(%#v)) = %#v", c, got)
		}
	}
}

// The binary batch layout is a format on disk: pin its bytes.
func TestEncode_BatchBinaryLayout(t *testing.T) {
	b := mustEncode(t, Batch{Commands: []Command{
		Deregister{Session: sA1},
		Register{RequestID: "r", Reg: reg("s", "h:1", sA1, -2)},
		Unknown{T: 0x90, Body: []byte{0xff}},
	}})
	want := "\x08\x03" + // type, count
		"\x02\x05" + "\x00" + "\x01a\x01\x01" + // Deregister: rid "", session a/1/1
		"\x01\x0d" + "\x01r" + "\x01s" + "\x03h:1" + "\x01a\x01\x01" + "\x03" + // Register, since -2 zigzag
		"\x90\x01\xff" // an unknown type's body, verbatim
	if string(b) != want {
		t.Fatalf("Encode = %q, want %q", b, want)
	}
}

func TestEncode_Errors(t *testing.T) {
	tests := []struct {
		name string
		cmd  Command
		want error
	}{
		{"nil", nil, ErrMalformed},
		{"nil batch pointer", (*Batch)(nil), ErrMalformed},
		{"nested batch", Batch{Commands: []Command{Batch{}}}, ErrMalformed},
		{"nested batch pointer", Batch{Commands: []Command{&Batch{}}}, ErrMalformed},
		{"nil in batch", Batch{Commands: []Command{nil}}, ErrMalformed},
		{"unknown without ignore bit", Unknown{T: 0x20}, ErrMalformed},
		{"unknown shadowing a known type", Unknown{T: TypeRegister}, ErrMalformed},
		{"unknown with bad body", Unknown{T: 0x81, Body: []byte("{")}, ErrMalformed},
		{"foreign command type", foreign{}, ErrUnknownType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Encode(tt.cmd); !errors.Is(err, tt.want) {
				t.Fatalf("Encode = %v, want %v", err, tt.want)
			}
		})
	}
}

type foreign struct{}

func (foreign) Type() CommandType { return 0x33 }

func TestEncode_AcceptsPointers(t *testing.T) {
	b, err := Encode(&Register{Reg: reg("svc", "h:1", sA1, 1)})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := Decode(b); err != nil || c.(Register).Reg.Namespace != "svc" {
		t.Fatalf("Decode = %#v, %v", c, err)
	}
	if _, err := Encode(&Batch{Commands: []Command{&Deregister{Session: sA1}}}); err != nil {
		t.Fatal(err)
	}
}

func TestDecode_Errors(t *testing.T) {
	tests := []struct {
		name    string
		data    string
		want    error
		mention string
	}{
		{"empty", "", ErrMalformed, "empty"},
		{"unknown type", "\x20{}", ErrUnknownType, "32"},
		{"type zero", "\x00{}", ErrUnknownType, "0"},
		{"bad json", "\x01{", ErrMalformed, "type 1"},
		{"trailing garbage", "\x02{} x", ErrMalformed, "type 2"},
		{"wrong field type", "\x03{\"upto\":\"x\"}", ErrMalformed, "type 3"},
		{"batch not an array", "\x05{}", ErrMalformed, "batch"},
		{"nested batch", "\x05[{\"t\":1,\"b\":{}},{\"t\":5,\"b\":[]}]", ErrMalformed, "batch command 1: nested batch"},
		{"bad command in batch", "\x05[{\"t\":4,\"b\":{\"meta\":1}}]", ErrMalformed, "batch command 0"},
		{"unknown type in batch", "\x05[{\"t\":9,\"b\":{}}]", ErrUnknownType, "batch command 0"},
		{"binary batch in json batch", "\x05[{\"t\":8,\"b\":[]}]", ErrMalformed, "nested batch"},
		{"binary: no count", "\x08", ErrMalformed, "count"},
		{"binary: count beyond the entry", "\x08\x05\x02\x00", ErrMalformed, "count"},
		{"binary: huge count", "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", ErrMalformed, "count"},
		{"binary: truncated item", "\x08\x01\x02\x09\x00", ErrMalformed, "command 0"},
		{"binary: truncated body", "\x08\x01\x02\x02\x00\x05", ErrMalformed, "type 2"},
		{"binary: bytes after the last item", "\x08\x01\x81\x00\x00", ErrMalformed, "after the last"},
		{"binary: nested batch", "\x08\x01\x08\x00", ErrMalformed, "nested batch"},
		{"binary: unknown type", "\x08\x02\x81\x00\x09\x00", ErrUnknownType, "command 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Decode([]byte(tt.data))
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode = %#v, %v; want %v", c, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("error %q does not mention %q", err, tt.mention)
			}
		})
	}
}

func TestDecode_IgnoresUnknownFieldsForForwardCompat(t *testing.T) {
	c, err := Decode([]byte("\x02{\"session\":{\"node\":\"a\",\"inc\":1,\"seq\":1},\"added_later\":1}"))
	if err != nil || c != (Deregister{Session: sA1}) {
		t.Fatalf("Decode = %#v, %v", c, err)
	}
	// In the binary form a later build appends fields after the known ones.
	c, err = Decode([]byte("\x08\x01\x02\x07\x00\x01a\x01\x01\x2a\x00"))
	if err != nil || !reflect.DeepEqual(c, Batch{Commands: []Command{Deregister{Session: sA1}}}) {
		t.Fatalf("Decode = %#v, %v", c, err)
	}
}
