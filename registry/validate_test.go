package registry

import (
	"encoding/json"
	"testing"
)

// The fast path must agree with the careful one on everything it accepts.
func TestNamespaceArg_FastPathAgreesWithDecoder(t *testing.T) {
	for _, props := range []string{`["svc"]`, `["a b"]`, `["x/y:z"]`, `[""]`, `["a\"b"]`, `["\u0041"]`, `["é"]`, `[ "svc" ]`, `["a","b"]`, `["a"`, `"a"]`, `["` + string(make([]byte, 300)) + `"]`} {
		fast, ok := plainNamespace(json.RawMessage(props))
		slow, err := func() (string, error) {
			var args []string
			if err := json.Unmarshal([]byte(props), &args); err != nil || len(args) != 1 {
				return "", errBad
			}
			return args[0], ValidateNamespace(args[0])
		}()
		if ok && (err != nil || fast != slow) {
			t.Errorf("%q: fast path accepted %q, decoder says %q %v", props, fast, slow, err)
		}
	}
	if ns, ok := plainNamespace(json.RawMessage(`["user-service"]`)); !ok || ns != "user-service" {
		t.Fatalf("common case not taken: %q %v", ns, ok)
	}
}

var errBad = json.Unmarshal([]byte("x"), new(any))

func BenchmarkNamespaceArg(b *testing.B) {
	props := json.RawMessage(`["user-service"]`)
	for b.Loop() {
		namespaceArg("where", props)
	}
}
