package httpapi

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// FuzzParseProps: the body of POST /v1/fetch is accepted when it is empty or a JSON array
// in valid UTF-8 (surrounding whitespace allowed), and what comes out is always a JSON array
// that can be sent to an agent in a text frame (valid JSON, valid UTF-8). The seed
// crash-invalid-utf8-reaches-agent is a body that, passed on, would make the agent close
// its registry connection with 1007.
func FuzzParseProps(f *testing.F) {
	for _, s := range []string{
		``, `   `, `[]`, `[1,"a"]`, " \n[{\"headers\":{},\"body\":null}]\t", `{}`, `"x"`, `null`, `[`, `[1,]`,
		`[1] [2]`, `[1]x`, "\u00a0[]", "[\"\xff\"]", `["\ud800"]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		in := bytes.Clone(body)
		props, err := parseProps(body)
		if !bytes.Equal(in, body) {
			t.Fatal("parseProps modified its input")
		}
		trimmed := bytes.Trim(body, " \t\r\n")
		isArray := len(trimmed) > 0 && trimmed[0] == '[' && json.Valid(trimmed) && utf8.Valid(trimmed)
		if err != nil {
			if len(trimmed) == 0 || isArray {
				t.Fatalf("parseProps(%q) refused a valid body: %v", body, err)
			}
			return
		}
		if !json.Valid(props) || len(props) == 0 || props[0] != '[' {
			t.Fatalf("parseProps(%q) = %q, not a JSON array", body, props)
		}
		var arr []json.RawMessage
		if err := json.Unmarshal(props, &arr); err != nil {
			t.Fatalf("parseProps(%q) = %q: %v", body, props, err)
		}
		if len(trimmed) == 0 {
			if string(props) != "[]" {
				t.Fatalf("empty body gave %q, want []", props)
			}
			return
		}
		// The props go verbatim into a WebSocket text frame: invalid UTF-8 there makes the
		// agent close its connection (1007), which for an agent connected to this node is
		// its registry channel.
		if !utf8.Valid(props) {
			t.Fatalf("parseProps(%q) accepted invalid UTF-8 that would be sent to the agent in a text frame", body)
		}
	})
}
