package wsserver

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecodeFrame_Golden(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Frame
		err  string // substring of the error; "" means success
	}{
		{name: "request", in: `{"id":0,"twoway":true,"data":{"cmd":"online","props":["svc-a"],"protocol":"ws"},"mode":0}`,
			want: Frame{ID: 0, Mode: ModeRequest, TwoWay: true, Data: json.RawMessage(`{"cmd":"online","props":["svc-a"],"protocol":"ws"}`)}},
		{name: "response undefined", in: `{"id":3,"mode":1,"twoway":false,"data":{"status":200}}`,
			want: Frame{ID: 3, Mode: ModeResponse, Data: json.RawMessage(`{"status":200}`)}},
		{name: "abort", in: `{"id":5,"twoway":false,"data":4,"mode":2}`,
			want: Frame{ID: 5, Mode: ModeAbort, Data: json.RawMessage(`4`)}},
		{name: "whitespace and unknown keys", in: " {\n \"x\" : [1,{\"id\":9}], \"id\" : 7 , \"mode\":1,\"extra\":\"}\"}\t",
			want: Frame{ID: 7, Mode: ModeResponse}},
		{name: "escaped key", in: `{"\u0069d":2,"mode":0,"data":null}`, want: Frame{ID: 2, Data: json.RawMessage(`null`)}},
		{name: "duplicate key last wins", in: `{"id":1,"id":2,"mode":0}`, want: Frame{ID: 2}},
		{name: "integral float id", in: `{"id":1.0,"mode":0}`, want: Frame{ID: 1}},
		{name: "twoway not a bool", in: `{"id":1,"mode":0,"twoway":1}`, want: Frame{ID: 1}},
		{name: "not JSON", in: `hello`, err: "not JSON"},
		{name: "truncated", in: `{"id":1,"mode":0`, err: "not JSON"},
		{name: "array", in: `[1,2]`, err: "not an object"},
		{name: "id missing", in: `{"mode":0}`, err: "id missing"},
		{name: "id string", in: `{"id":"1","mode":0}`, err: "not an integer"},
		{name: "id fraction", in: `{"id":1.5,"mode":0}`, err: "not an integer"},
		{name: "mode missing", in: `{"id":1}`, err: "mode missing"},
		{name: "mode unknown", in: `{"id":1,"mode":3}`, err: "unknown mode"},
		{name: "mode string", in: `{"id":1,"mode":"0"}`, err: "unknown mode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeFrame([]byte(tt.in))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, ErrMalformed) {
					t.Fatalf("err = %v, want one containing %q wrapping ErrMalformed", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.ID != tt.want.ID || got.Mode != tt.want.Mode || got.TwoWay != tt.want.TwoWay || string(got.Data) != string(tt.want.Data) {
				t.Fatalf("got %+v (data %s), want %+v (data %s)", got, got.Data, tt.want, tt.want.Data)
			}
		})
	}
}

func TestDecodeRequest_Shapes(t *testing.T) {
	r, err := DecodeRequest([]byte(`{"cmd":"/a\/b","protocol":"ws","future":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Cmd != "/a/b" || r.Protocol != "ws" || r.Props != nil {
		t.Fatalf("got %+v", r)
	}
	r, err = DecodeRequest([]byte(`{"cmd":"x","props":[1,"two",{"x":3}],"protocol":"http"}`))
	if err != nil || string(r.Props) != `[1,"two",{"x":3}]` {
		t.Fatalf("got %+v, %v", r, err)
	}
	for _, bad := range []string{`5`, `null`, `{"cmd":5,"protocol":"ws"}`, `{"cmd":"x"}`, `{"protocol":"ws"}`, `{"cmd":"x","protocol":null}`} {
		if _, err := DecodeRequest([]byte(bad)); err == nil {
			t.Errorf("DecodeRequest(%s): no error", bad)
		}
	}
}

func TestDecodeResponse_Quirks(t *testing.T) {
	tests := []struct {
		in      string
		status  int
		code    string
		hasData bool
		data    string
		message string
		err     bool
	}{
		{in: `{"status":200}`, status: 200},
		{in: `{"status":200,"data":null}`, status: 200, hasData: true, data: "null"},
		{in: `{"status":200,"data":"10.0.0.7:9001"}`, status: 200, hasData: true, data: `"10.0.0.7:9001"`},
		{in: `{"data":[1],"status":200,"unknown":{"a":[]}}`, status: 200, hasData: true, data: `[1]`},
		{in: `{"status":104,"data":null,"message":"Cannot find the url 'ws:/nosuch'"}`, status: 104, hasData: true, data: "null", message: "Cannot find the url 'ws:/nosuch'"},
		{in: `{"status":"ECONNABORTED","data":null,"message":"Abort"}`, code: "ECONNABORTED", hasData: true, data: "null", message: "Abort"},
		{in: `{"data":1}`, err: true},
		{in: `{"status":true}`, err: true},
		{in: `"x"`, err: true},
	}
	for _, tt := range tests {
		r, err := decodeResponse([]byte(tt.in))
		if tt.err {
			if err == nil {
				t.Errorf("%s: no error", tt.in)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.in, err)
			continue
		}
		if r.status != tt.status || r.code != tt.code || r.hasData != tt.hasData || string(r.data) != tt.data || r.message != tt.message {
			t.Errorf("%s: got %+v", tt.in, r)
		}
	}
}

func TestEncode_Golden(t *testing.T) {
	tests := []struct{ name, got, want string }{
		{"request", string(appendRequest(nil, 0, true, "ws", "online", []byte(`["user-service"]`))),
			`{"id":0,"twoway":true,"data":{"cmd":"online","props":["user-service"],"protocol":"ws"},"mode":0}`},
		{"one-way request", string(appendRequest(nil, 12, false, "http", "/users/:id", []byte(`[{"query":{}}]`))),
			`{"id":12,"twoway":false,"data":{"cmd":"/users/:id","props":[{"query":{}}],"protocol":"http"},"mode":0}`},
		{"abort", string(appendAbort(nil, 2, 1)), `{"id":2,"twoway":false,"data":1,"mode":2}`},
		{"success undefined has no data key", string(appendSuccess(nil, 0, nil)), `{"id":0,"mode":1,"twoway":false,"data":{"status":200}}`},
		{"success null", string(appendSuccess(nil, 1, []byte("null"))), `{"id":1,"mode":1,"twoway":false,"data":{"status":200,"data":null}}`},
		{"success value", string(appendSuccess(nil, 1, []byte(`"10.0.0.7:9001"`))), `{"id":1,"mode":1,"twoway":false,"data":{"status":200,"data":"10.0.0.7:9001"}}`},
		{"failure", string(appendFailure(nil, 3, 104, "", "Cannot find the url 'ws:/nosuch'")),
			`{"id":3,"mode":1,"twoway":false,"data":{"status":104,"data":null,"message":"Cannot find the url 'ws:/nosuch'"}}`},
		{"failure string status", string(appendFailure(nil, 4, 0, "ECONNABORTED", "Abort")),
			`{"id":4,"mode":1,"twoway":false,"data":{"status":"ECONNABORTED","data":null,"message":"Abort"}}`},
		{"string escapes like JSON.stringify", string(appendString(nil, "a\"b\\c\n\t\x01<>&\u2028é\xff")),
			`"a\"b\\c\n\t\u0001<>&` + "\u2028é" + `\ufffd"`},
		{"frame", string(Frame{ID: 9, Mode: ModeResponse, Data: json.RawMessage(`{"status":200}`)}.AppendJSON(nil)),
			`{"id":9,"mode":1,"twoway":false,"data":{"status":200}}`},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s:\n got  %s\n want %s", tt.name, tt.got, tt.want)
		}
	}
	// Every encoded string must decode back to the original.
	for _, s := range []string{"plain", "quote\" back\\slash", "ctl\x00\x1f\x7f", "ünï☃"} {
		var back string
		if err := json.Unmarshal(appendString(nil, s), &back); err != nil || back != s {
			t.Errorf("round trip %q: %q, %v", s, back, err)
		}
	}
}

func TestDecode_NoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	msg := []byte(`{"id":17,"twoway":true,"data":{"cmd":"where","props":["user-service"],"protocol":"ws"},"mode":0}`)
	resp := []byte(`{"id":17,"mode":1,"twoway":false,"data":{"status":200,"data":"10.0.0.7:9001"}}`)
	mux := NewMux()
	mux.Handle("ws", "where", echoHandler)
	allocs := testing.AllocsPerRun(100, func() {
		f, err := DecodeFrame(msg)
		if err != nil {
			t.Fatal(err)
		}
		r, err := decodeRequest(f.Data)
		if err != nil || mux.lookup(r.protocol, r.cmd).h == nil {
			t.Fatal("lookup failed")
		}
		f, _ = DecodeFrame(resp)
		if _, err := decodeResponse(f.Data); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("decode allocates %v times per request+response", allocs)
	}
	buf := make([]byte, 0, 256)
	allocs = testing.AllocsPerRun(100, func() {
		buf = appendSuccess(buf[:0], 17, []byte(`"10.0.0.7:9001"`))
		buf = appendRequest(buf[:0], 17, true, "ws", "where", []byte(`["x"]`))
	})
	if allocs != 0 {
		t.Errorf("encode allocates %v times", allocs)
	}
}

func BenchmarkDecodeRequest(b *testing.B) {
	msg := []byte(`{"id":17,"twoway":true,"data":{"cmd":"where","props":["user-service"],"protocol":"ws"},"mode":0}`)
	b.ReportAllocs()
	for b.Loop() {
		f, _ := DecodeFrame(msg)
		_, _ = decodeRequest(f.Data)
	}
}

func BenchmarkEncodeSuccess(b *testing.B) {
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendSuccess(buf[:0], 17, []byte(`"10.0.0.7:9001"`))
	}
}
