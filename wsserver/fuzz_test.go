package wsserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"testing"
	"unicode/utf8"
)

// Seeds shared by the decoder fuzz targets: the protocol's example exchange, its quirks
// and a few malformed shapes. The files under testdata/fuzz add what fuzzing found.
var frameSeeds = []string{
	`{"id":0,"twoway":true,"data":{"cmd":"online","props":["user-service"],"protocol":"ws"},"mode":0}`,
	`{"id":0,"mode":1,"twoway":false,"data":{"status":200}}`,
	`{"id":1,"mode":1,"twoway":false,"data":{"status":200,"data":"10.0.0.7:9001"}}`,
	`{"id":3,"mode":1,"twoway":false,"data":{"status":104,"data":null,"message":"Cannot find the url 'ws:/nosuch'"}}`,
	`{"id":2,"twoway":false,"data":1,"mode":2}`,
	`{"id":1e3,"mode":1.0,"twoway":"true","data":{"status":"ECONNABORTED","data":null,"message":"Abort"}}`,
	`{"\u0069d":7,"mode":0,"id":8,"data":{"c\u006dd":"x","protocol":"ws","props":[1,{"a":[]}]}}`,
	` {"id":-9223372036854775808,"mode":0,"data":{}} `,
	`{"id":9007199254740993.0,"mode":0}`,
	`{"id":0,"mode":3}`,
	`[]`, `null`, `{`, `{"id":0,"mode":0,"data":"\ud800"}`,
}

// FuzzDecodeFrame: DecodeFrame never panics, errors wrap ErrMalformed, and a decoded
// frame survives AppendJSON -> DecodeFrame unchanged (the encoder writes what the decoder reads).
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range frameSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		fr, err := DecodeFrame(b)
		if !bytes.Equal(in, b) {
			t.Fatalf("DecodeFrame modified its input")
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		if fr.Mode < ModeRequest || fr.Mode > ModeAbort {
			t.Fatalf("accepted mode %d", fr.Mode)
		}
		if fr.Data != nil && !json.Valid(fr.Data) {
			t.Fatalf("Data %q is not a JSON value", fr.Data)
		}
		out := fr.AppendJSON(nil)
		again, err := DecodeFrame(out)
		if err != nil {
			t.Fatalf("DecodeFrame(AppendJSON(%+v)) = %v; encoded %q", fr, err, out)
		}
		want := fr
		if want.Data == nil {
			want.Data = json.RawMessage("null") // AppendJSON writes an absent data key as null
		}
		if again.ID != want.ID || again.Mode != want.Mode || again.TwoWay != want.TwoWay || !bytes.Equal(again.Data, want.Data) {
			t.Fatalf("round trip changed the frame: %+v -> %q -> %+v", fr, out, again)
		}
		// What the channel does next with the data of each mode must not panic either.
		switch fr.Mode {
		case ModeRequest:
			if fr.Data != nil {
				_, _ = DecodeRequest(fr.Data)
			}
		case ModeResponse:
			if fr.Data != nil {
				_, _ = decodeResponse(fr.Data)
			}
		}
	})
}

// FuzzDecodeRequest: DecodeRequest (fed valid JSON, as the channel does) never panics,
// and a request it accepts re-encodes with appendRequest into a frame that decodes to
// the same protocol, cmd and props.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"cmd":"online","props":["user-service"],"protocol":"ws"}`,
		`{"cmd":"where","props":["nobody"],"protocol":"ws"}`,
		`{"cmd":"/echo","props":[1,"a"],"protocol":"ws"}`,
		`{"cmd":"/users/:id","props":[{"headers":{},"query":{},"params":{"id":"1"},"cookie":{},"body":null}],"protocol":"http"}`,
		`{"cmd":"online","protocol":"ws"}`,
		`{"cmd":5,"protocol":"ws"}`,
		`{"cmd":"a\"b\\c\u0000\u2028","protocol":"\ud83d\ude00","props":[]}`,
		`{"cmd":"x","protocol":"ws","props":null,"props":[2]}`,
		`"str"`, `{}`, `[{"cmd":"x"}]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) {
			return // DecodeFrame hands DecodeRequest only valid JSON
		}
		req, err := DecodeRequest(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if req.Props != nil && !json.Valid(req.Props) {
			t.Fatalf("props %q is not a JSON value", req.Props)
		}
		props := req.Props
		if props == nil {
			props = json.RawMessage("[]")
		}
		out := appendRequest(nil, 42, true, req.Protocol, req.Cmd, props)
		fr, err := DecodeFrame(out)
		if err != nil {
			t.Fatalf("DecodeFrame(appendRequest(%+v)) = %v; encoded %q", req, err, out)
		}
		if fr.ID != 42 || fr.Mode != ModeRequest || !fr.TwoWay {
			t.Fatalf("re-encoded frame header is %+v", fr)
		}
		again, err := DecodeRequest(fr.Data)
		if err != nil {
			t.Fatalf("DecodeRequest of re-encoded %q: %v", fr.Data, err)
		}
		// appendString replaces invalid UTF-8 by U+FFFD, as JSON.stringify would send it.
		if again.Protocol != validUTF8(req.Protocol) || again.Cmd != validUTF8(req.Cmd) || !bytes.Equal(again.Props, props) {
			t.Fatalf("round trip changed the request: %+v -> %q -> %+v", req, out, again)
		}
	})
}

// FuzzEncodeResponse: what a node answers (success or failure) decodes back to the same
// status, code, message and result, whatever the strings hold.
func FuzzEncodeResponse(f *testing.F) {
	f.Add(int64(0), 200, "", "", []byte(`"10.0.0.7:9001"`), true)
	f.Add(int64(3), 104, "", "Cannot find the url 'ws:/nosuch'", []byte(nil), false)
	f.Add(int64(1), 0, "ECONNABORTED", "Abort", []byte(nil), false)
	f.Add(int64(math.MaxInt64), -1, "", "a\"b\\\n\x00\u2028\xff", []byte(`null`), false)
	f.Fuzz(func(t *testing.T, id int64, status int, code, message string, result []byte, success bool) {
		var out []byte
		if success {
			if result != nil && !json.Valid(result) {
				return // handlers return valid JSON (json.RawMessage)
			}
			out = appendSuccess(nil, id, result)
		} else {
			if status < math.MinInt32 || status > math.MaxInt32 {
				return // statuses are iocore's small numbers
			}
			out = appendFailure(nil, id, status, code, message)
		}
		if !utf8.Valid(out) {
			// A text frame must be UTF-8, or the peer closes the connection with 1007.
			if !success || utf8.Valid(result) {
				t.Fatalf("encoded frame is not valid UTF-8: %q", out)
			}
			return
		}
		fr, err := DecodeFrame(out)
		if err != nil {
			t.Fatalf("DecodeFrame(%q): %v", out, err)
		}
		if fr.ID != id || fr.Mode != ModeResponse || fr.TwoWay {
			t.Fatalf("frame header %+v from %q", fr, out)
		}
		r, err := decodeResponse(fr.Data)
		if err != nil {
			t.Fatalf("decodeResponse(%q): %v", fr.Data, err)
		}
		if success {
			if r.status != 200 || r.code != "" || r.hasData != (result != nil) || !bytes.Equal(r.data, trimWS(result)) {
				t.Fatalf("success %q decoded as %+v", out, r)
			}
			return
		}
		wantCode, wantStatus := validUTF8(code), status
		if code != "" {
			wantStatus = 0
		}
		if r.status != wantStatus || r.code != wantCode || r.message != validUTF8(message) || !r.hasData || string(r.data) != "null" {
			t.Fatalf("failure %q decoded as %+v", out, r)
		}
	})
}

// validUTF8 is s as appendString sends it: each invalid byte becomes U+FFFD.
func validUTF8(s string) string {
	var b []byte
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = utf8.AppendRune(b, utf8.RuneError)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return string(b)
}
