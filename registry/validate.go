package registry

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/wsregistry/wsregistry/wsserver"
)

// MaxNamespaceBytes bounds a namespace so one agent cannot make every node hold huge keys.
const MaxNamespaceBytes = 256

// namespaceArg extracts the one namespace of an `online` or `where` request. The original
// registers whatever JSON value comes first (so 5 and "5" differ, and no prop means
// "undefined"); we refuse all of that with a 400 that names the problem.
func namespaceArg(cmd string, props json.RawMessage) (string, error) {
	if ns, ok := plainNamespace(props); ok {
		return ns, nil
	}
	var args []json.RawMessage
	if len(props) == 0 {
		return "", wsserver.NewError(400, "%s expects props [namespace], got no props", cmd)
	}
	if err := json.Unmarshal(props, &args); err != nil {
		return "", wsserver.NewError(400, "%s expects props [namespace], props is not an array", cmd)
	}
	if len(args) != 1 {
		return "", wsserver.NewError(400, "%s expects exactly one prop (the namespace), got %d", cmd, len(args))
	}
	var ns string
	if len(args[0]) == 0 || args[0][0] != '"' {
		return "", wsserver.NewError(400, "%s: the namespace must be a string, got %s", cmd, jsonKind(args[0]))
	}
	if err := json.Unmarshal(args[0], &ns); err != nil {
		return "", wsserver.NewError(400, "%s: the namespace must be a string, got %s", cmd, jsonKind(args[0]))
	}
	if err := ValidateNamespace(ns); err != nil {
		return "", wsserver.NewError(400, "%s: %v", cmd, err)
	}
	return ns, nil
}

// ValidateNamespace applies the same rules to the WebSocket and HTTP paths.
func ValidateNamespace(ns string) error { return validateName("the namespace", ns) }

// validateName holds a name (a namespace, a node id) to the rules of a namespace: not
// empty, at most MaxNamespaceBytes, valid UTF-8, no control characters. what names it in
// the error.
func validateName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", what)
	case len(s) > MaxNamespaceBytes:
		return fmt.Errorf("%s is %d bytes long, the limit is %d", what, len(s), MaxNamespaceBytes)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s is not valid UTF-8", what)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return fmt.Errorf("%s contains a control character (0x%02x) at byte %d", what, c, i)
		}
	}
	return nil
}

func jsonKind(v json.RawMessage) string {
	if len(v) == 0 {
		return "nothing"
	}
	switch v[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	case '"':
		return "a string"
	default:
		return "a number"
	}
}

// plainNamespace is the hot path of where and online: props exactly ["<ns>"] with no
// escapes, no control characters and only ASCII (everything else takes the careful path).
// It skips the JSON decoder, the largest cost of a where otherwise.
func plainNamespace(props json.RawMessage) (string, bool) {
	body, ok := plainNamespaceBytes(props)
	return string(body), ok
}

// plainNamespaceBytes is plainNamespace without the copy: the namespace's bytes in props.
func plainNamespaceBytes(props json.RawMessage) ([]byte, bool) {
	if len(props) < 5 || props[0] != '[' || props[1] != '"' || props[len(props)-1] != ']' || props[len(props)-2] != '"' {
		return nil, false
	}
	body := props[2 : len(props)-2]
	if len(body) == 0 || len(body) > MaxNamespaceBytes {
		return nil, false
	}
	for _, c := range body {
		if c < 0x20 || c == '"' || c == '\\' || c >= 0x7f {
			return nil, false
		}
	}
	return body, true
}
