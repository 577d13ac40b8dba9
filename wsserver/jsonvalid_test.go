package wsserver

import (
	"encoding/json"
	"strings"
	"testing"
)

var validJSONCases = []string{
	``, ` `, `{}`, `[]`, ` { } `, `{"a":1}`, `{"a" : [1, 2.5, -0, 1e9, 1E-9, -12.3e+4]}`, `[1,]`, `{"a":1,}`,
	`{"a"}`, `{"a":}`, `{:1}`, `{1:1}`, `[1 2]`, `{"a":1 "b":2}`, `01`, `-`, `1.`, `.5`, `1e`, `1e+`, `-01`, `+1`,
	`"abc"`, `"a\"b"`, `"\u00e9\uD83D\uDE00"`, `"\u00g0"`, `"\u12"`, `"\x"`, `"tab	inside"`, "\"\x00\"", `"unterminated`,
	`true`, `false`, `null`, `tru`, `truex`, `nul`, `[true,false,null]`, `{"id":0,"twoway":true,"data":{"cmd":"where","props":["ns"],"protocol":"ws"},"mode":0}`,
	`"é"`, "\"\xff\"", `[[[[]]]]`, `[[[[]]]`, `[]]`, `{}}`, `{"a":{"b":[{}]}}`, `1 2`, "\ufeff1", "1\n", "\t[\r\n]\t",
	`{"a":1}x`, `[1,[2,[3]],{"k":"v"}]`, `{"a":[}`, `[{]`, `[{"a":1]}`,
}

func TestValidJSON_AgreesWithEncodingJSON(t *testing.T) {
	for _, c := range validJSONCases {
		if got, want := validJSON([]byte(c)), json.Valid([]byte(c)); got != want {
			t.Errorf("validJSON(%q) = %v, json.Valid says %v", c, got, want)
		}
	}
}

func TestValidJSON_NestingLimitIsEncodingJSONs(t *testing.T) {
	for _, depth := range []int{maxNesting - 1, maxNesting, maxNesting + 1} {
		for _, open := range []string{"[", `{"k":`} {
			closeWith := "]"
			if open != "[" {
				closeWith = "}"
			}
			for _, inner := range []string{"1", "[]", "{}"} {
				b := []byte(strings.Repeat(open, depth-1) + inner + strings.Repeat(closeWith, depth-1))
				if got, want := validJSON(b), json.Valid(b); got != want {
					t.Errorf("depth %d of %q around %s: validJSON %v, json.Valid %v", depth, open, inner, got, want)
				}
			}
		}
	}
}

// FuzzValidJSON: validJSON and encoding/json.Valid give the same answer for any bytes.
func FuzzValidJSON(f *testing.F) {
	for _, c := range validJSONCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid says %v", b, got, want)
		}
	})
}

func BenchmarkValidJSON_WhereRequest(b *testing.B) {
	msg := []byte(`{"id":12345,"twoway":true,"data":{"cmd":"where","props":["billing-service"],"protocol":"ws"},"mode":0}`)
	b.Run("validJSON", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			validJSON(msg)
		}
	})
	b.Run("encoding/json.Valid", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			json.Valid(msg)
		}
	})
}
