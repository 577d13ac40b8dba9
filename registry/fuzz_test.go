package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/wsregistry/wsregistry/wsserver"
)

// FuzzParseProps: the body of POST /v1/fetch is accepted when it is empty or a JSON array
// in valid UTF-8 (surrounding whitespace allowed), and what comes out is always a JSON array
// that can be sent to an agent in a text frame (valid JSON, valid UTF-8). The seed
// crash-invalid-utf8-reaches-agent is the body that used to make the agent close its
// registry connection with 1007.
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

// FuzzNamespaceArg: namespaceArg returns a namespace exactly when props is a JSON array of
// one string that passes ValidateNamespace; every refusal is a 400 *wsserver.Error.
func FuzzNamespaceArg(f *testing.F) {
	for _, s := range []string{
		`["user-service"]`, `[]`, `["a","b"]`, `[5]`, `["5"]`, `[null]`, `[""]`, `["a\u0000b"]`,
		`["\u007f"]`, `["\ud800"]`, "[\"\xff\"]", `{"0":"a"}`, `"a"`, ``, ` ["x"] `, `[["x"]]`,
		`["` + string(bytes.Repeat([]byte("é"), 128)) + `"]`,
	} {
		f.Add("online", []byte(s))
	}
	f.Fuzz(func(t *testing.T, cmd string, props []byte) {
		ns, err := namespaceArg(cmd, props)
		var args []string
		wantOK := json.Unmarshal(props, &args) == nil && len(args) == 1 && ValidateNamespace(args[0]) == nil &&
			len(bytes.TrimLeft(props, " \t\r\n")) > 0 && bytes.TrimLeft(props, " \t\r\n")[0] == '['
		if err != nil {
			var we *wsserver.Error
			if !errors.As(err, &we) || we.Status != 400 {
				t.Fatalf("namespaceArg(%q) error %v is not a 400 *wsserver.Error", props, err)
			}
			if wantOK {
				// encoding/json takes ["a"] with spaces inside, and namespaceArg must too;
				// the one accepted difference is a namespace element written as something
				// that is not a JSON string literal, which Unmarshal into string refuses anyway.
				t.Fatalf("namespaceArg(%q) refused a valid namespace %q: %v", props, args[0], err)
			}
			return
		}
		if !wantOK || ns != args[0] {
			t.Fatalf("namespaceArg(%q) = %q, want refusal or %v", props, ns, args)
		}
		if ValidateNamespace(ns) != nil || !utf8.ValidString(ns) {
			t.Fatalf("namespaceArg(%q) accepted %q", props, ns)
		}
	})
}
