package wsserver

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// generalRequest is what dispatch makes of msg without parseRequest: ok when it starts a
// handler, with what it starts it with.
func generalRequest(msg []byte) (id int64, twoway bool, r rawRequest, ok bool) {
	f, err := DecodeFrame(msg)
	if err != nil || f.Mode != ModeRequest || f.Data == nil {
		return 0, false, rawRequest{}, false
	}
	r, err = decodeRequest(f.Data)
	if err != nil {
		return 0, false, rawRequest{}, false
	}
	return f.ID, f.TwoWay, r, true
}

// checkParseRequest fails t unless parseRequest either declines msg or gives exactly what
// the general path gives, and reports whether parseRequest took it.
func checkParseRequest(t *testing.T, msg []byte) bool {
	t.Helper()
	in := bytes.Clone(msg)
	id, twoway, r, ok := parseRequest(msg)
	if !bytes.Equal(in, msg) {
		t.Fatalf("parseRequest modified its input")
	}
	if !ok {
		return false
	}
	gid, gtwoway, gr, gok := generalRequest(msg)
	switch {
	case !gok:
		t.Fatalf("parseRequest(%q) took a message the general path does not serve: id %d twoway %v %+v", msg, id, twoway, r)
	case id != gid || twoway != gtwoway:
		t.Fatalf("parseRequest(%q): id %d twoway %v, general path: id %d twoway %v", msg, id, twoway, gid, gtwoway)
	case string(r.protocol) != string(gr.protocol) || string(r.cmd) != string(gr.cmd):
		t.Fatalf("parseRequest(%q): protocol %q cmd %q, general path: %q %q", msg, r.protocol, r.cmd, gr.protocol, gr.cmd)
	case (r.props == nil) != (gr.props == nil) || !bytes.Equal(r.props, gr.props):
		t.Fatalf("parseRequest(%q): props %q (nil %v), general path: %q (nil %v)", msg, r.props, r.props == nil, gr.props, gr.props == nil)
	case !json.Valid(msg):
		t.Fatalf("parseRequest took invalid JSON %q", msg)
	}
	return true
}

// parseRequestCases: the common shape and its variations. fast says whether parseRequest
// takes the message (the rest go to the general path, whatever it makes of them).
var parseRequestCases = []struct {
	msg  string
	fast bool
}{
	// What agents send, and the same in other spellings.
	{`{"id":1,"twoway":true,"data":{"cmd":"where","props":["user-service"],"protocol":"ws"},"mode":0}`, true},
	{`{"id":0,"twoway":true,"data":{"cmd":"online","props":["user-service"],"protocol":"ws"},"mode":0}`, true},
	{`{"mode":0,"data":{"protocol":"ws","props":["a"],"cmd":"where"},"twoway":true,"id":7}`, true},
	{" \t\r\n{ \"id\" : 5 , \"twoway\" : true , \"data\" : { \"cmd\" : \"where\" , \"props\" : [ \"a\" ] , \"protocol\" : \"ws\" } , \"mode\" : 0 } \n", true},
	{`{"id":2,"twoway":false,"data":{"cmd":"where","props":["a"],"protocol":"ws"},"mode":0}`, true},
	{`{"id":2,"data":{"cmd":"where","props":["a"],"protocol":"ws"},"mode":0}`, true}, // no twoway: false
	{`{"id":2,"twoway":"true","data":{"cmd":"x","protocol":"ws"},"mode":0}`, true},   // false: only the literal true is true
	{`{"id":2,"twoway":1,"data":{"cmd":"x","protocol":"ws"},"mode":0}`, true},
	{`{"id":2,"twoway":[true],"data":{"cmd":"x","protocol":"ws"},"mode":0}`, true},
	{`{"id":3,"twoway":true,"data":{"cmd":"where","protocol":"ws"},"mode":0}`, true}, // no props: nil
	{`{"id":3,"twoway":true,"data":{"cmd":"","protocol":""},"mode":0}`, true},        // empty strings
	{`{"id":3,"twoway":true,"data":{"cmd":"w","props":null,"protocol":"ws"},"mode":0}`, true},
	{`{"id":3,"twoway":true,"data":{"cmd":"w","props":{"a":[1,{"b":null}]},"protocol":"ws"},"mode":0}`, true},
	{`{"id":3,"twoway":true,"data":{"cmd":"w","props":[1,-2.5e3,true,false,null,"s\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"],"protocol":"ws"},"mode":0}`, true},
	{`{"id":3,"twoway":true,"data":{"cmd":"wheré☃","props":["ünï"],"protocol":"ws"},"mode":0}`, true},
	{"{\"id\":3,\"twoway\":true,\"data\":{\"cmd\":\"w\xff\xfe\",\"protocol\":\"ws\"},\"mode\":0}", true}, // binary messages skip the UTF-8 check
	{`{"id":3,"twoway":true,"data":{"cmd":"w","protocol":"ws","extra":{"k":[]},"x\u0041":1},"mode":0}`, false},
	{`{"id":3,"twoway":true,"data":{"cmd":"w","protocol":"ws","extra":{"k":[]}},"mode":0,"more":"\u0041"}`, true},
	{`{"id":3,"twoway":true,"data":{"cmd":"w","protocol":"ws"},"mode":0,"other":[{"a":[]}],"n":null}`, true},
	{`{"id":-0,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, true},
	{`{"id":-42,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, true},
	{`{"id":999999999999999999,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, true},
	{`{"id":-999999999999999999,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, true},

	// Ids the general path reads some other way, or refuses.
	{`{"id":1000000000000000000,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":9223372036854775807,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":9223372036854775808,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":1e3,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":1.0,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":1.5,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":1E+2,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":01,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":-,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":"1","data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":null,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},

	// Modes.
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":0.0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":-0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":0e0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":00}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":"0"}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":1}`, false},
	{`{"id":1,"data":{"status":200},"mode":1}`, false},
	{`{"id":1,"data":1,"mode":2}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"}}`, false},

	// Repeated keys: the last wins in the general path.
	{`{"id":1,"id":2,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":1,"mode":0}`, false},
	{`{"id":1,"twoway":true,"twoway":false,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"data":{"cmd":"v","protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w","cmd":"v","protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws","props":[1],"props":[2]},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws","protocol":"http"},"mode":0}`, false},

	// Escapes where parseRequest compares or hands out bytes.
	{`{"\u0069d":1,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"data":{"c\u006dd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w\u00e9","protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"w\"s"},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"a\ud800","protocol":"ws"},"mode":0}`, false},

	// Data that is no request.
	{`{"id":1,"data":{},"mode":0}`, false},
	{`{"id":1,"data":null,"mode":0}`, false},
	{`{"id":1,"data":[],"mode":0}`, false},
	{`{"id":1,"data":"x","mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w"},"mode":0}`, false},
	{`{"id":1,"data":{"protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":5,"protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":null},"mode":0}`, false},
	{`{"id":1,"mode":0}`, false},

	// Not JSON, or not an object.
	{``, false}, {` `, false}, {`{}`, false}, {`[]`, false}, {`null`, false}, {`"id"`, false}, {`{`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":0}x`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":0}{}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":0,}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws",},"mode":0}`, false},
	{`{"id":1 "data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":0`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws","props":[1,]},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws","props":[tru]},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws","props":["\x"]},"mode":0}`, false},
	{"{\"id\":1,\"data\":{\"cmd\":\"w\",\"protocol\":\"ws\",\"props\":[\"tab\there\"]},\"mode\":0}", false},
	{"{\"id\":1,\"data\":{\"cmd\":\"w\x01\",\"protocol\":\"ws\"},\"mode\":0}", false},
	{"{\"id\":1,\"data\":{\"cmd\":\"w\",\"protocol\":\"ws\"},\"mode\":0,\"k\x00\":1}", false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":0,"x":[}`, false},
	{`{"id":1,"twoway":tru,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"twoway":truex,"data":{"cmd":"w","protocol":"ws"},"mode":0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":0 0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode"0}`, false},
	{`{"id":1,"data":{"cmd":"w","protocol":"ws"},"mode":}`, false},
}

func TestParseRequest_AgreesWithGeneralPath(t *testing.T) {
	for _, c := range parseRequestCases {
		if got := checkParseRequest(t, []byte(c.msg)); got != c.fast {
			t.Errorf("parseRequest took %q: %v, want %v", c.msg, got, c.fast)
		}
	}
}

// The nesting limit counts the frame's own objects: props nested to the limit is refused
// by both paths, one level less is served by both.
func TestParseRequest_NestingLimitCountsTheFrame(t *testing.T) {
	for _, depth := range []int{maxNesting - 3, maxNesting - 2, maxNesting - 1} {
		props := strings.Repeat("[", depth) + strings.Repeat("]", depth)
		msg := []byte(`{"id":1,"data":{"cmd":"w","protocol":"ws","props":` + props + `},"mode":0}`)
		fast := checkParseRequest(t, msg)
		_, _, _, general := generalRequest(msg)
		if want := depth <= maxNesting-2; fast != want || general != want {
			t.Errorf("props nested %d deep in a request: parseRequest took it %v, general path %v, want %v", depth, fast, general, want)
		}
	}
}

func TestParseRequest_NoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	msg := []byte(`{"id":17,"twoway":true,"data":{"cmd":"where","props":["user-service"],"protocol":"ws"},"mode":0}`)
	allocs := testing.AllocsPerRun(100, func() {
		if _, _, _, ok := parseRequest(msg); !ok {
			t.Fatal("parseRequest declined a where")
		}
	})
	if allocs != 0 {
		t.Errorf("parseRequest allocates %v times per request", allocs)
	}
}

// FuzzParseRequest: for any bytes, parseRequest declines or agrees with the general path.
func FuzzParseRequest(f *testing.F) {
	for _, s := range frameSeeds {
		f.Add([]byte(s))
	}
	for _, c := range parseRequestCases {
		f.Add([]byte(c.msg))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkParseRequest(t, b)
	})
}

func BenchmarkParseRequest(b *testing.B) {
	msg := []byte(`{"id":12345,"twoway":true,"data":{"cmd":"where","props":["billing-service"],"protocol":"ws"},"mode":0}`)
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			if _, _, _, ok := parseRequest(msg); !ok {
				b.Fatal("declined")
			}
		}
	})
	b.Run("general", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			if _, _, _, ok := generalRequest(msg); !ok {
				b.Fatal("declined")
			}
		}
	})
}
