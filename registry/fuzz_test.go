package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"unicode/utf8"

	"github.com/wsregistry/wsregistry/wsserver"
)

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
