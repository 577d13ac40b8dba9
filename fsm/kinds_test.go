package fsm

import (
	"errors"
	"go/ast"
	"go/constant"
	"go/parser"
	"go/token"
	"go/types"
	"os"
	"reflect"
	"strings"
	"testing"
)

// notCommands are the CommandType constants that name no command of their own.
var notCommands = map[string]bool{
	"IgnoreIfUnknown": true, // a bit of the type byte
	"TypeBatch":       true, // containers: Decode and Apply open them
	"TypeBinaryBatch": true,
}

// A command type declared without an entry in kinds would decode as unknown: the node
// would stop on it (or skip it, with IgnoreIfUnknown) instead of applying it.
func TestKinds_EveryCommandTypeHasAnEntry(t *testing.T) {
	consts := commandTypeConstants(t)
	for _, name := range []string{"TypeRegister", "TypeBatch", "TypeBinaryBatch", "IgnoreIfUnknown"} {
		if _, ok := consts[name]; !ok {
			t.Fatalf("found no constant %s among %v: the source scan is broken", name, consts)
		}
	}
	named := make(map[CommandType]string)
	for name, ct := range consts {
		if other, dup := named[ct]; dup && !notCommands[name] && !notCommands[other] {
			t.Errorf("%s and %s are both type %d", name, other, ct)
		}
		switch {
		case notCommands[name]:
			if kinds[ct] != nil {
				t.Errorf("%s (%d) has an entry in kinds; Decode would never use it", name, ct)
			}
		case kinds[ct] == nil:
			t.Errorf("CommandType constant %s (%d) has no entry in kinds", name, ct)
		default:
			named[ct] = name
		}
	}
	for i, k := range kinds {
		if k != nil && named[CommandType(i)] == "" {
			t.Errorf("kinds has an entry for type %d, which no CommandType constant names", i)
		}
	}
}

// Each entry is wired to its own type: what it decodes reports that type, and its binary
// body reads back as what was written.
func TestKinds_EntriesMatchTheirType(t *testing.T) {
	for i, k := range kinds {
		if k == nil {
			continue
		}
		ct := CommandType(i)
		if k.decodeJSON == nil || k.decodeBinary == nil || k.appendBinary == nil || k.requestID == nil || k.apply == nil {
			t.Errorf("type %d: entry has a nil function: %+v", ct, k)
			continue
		}
		cmd, err := k.decodeJSON([]byte(`{"rid":"r"}`))
		if err != nil {
			t.Errorf("type %d: decodeJSON: %v", ct, err)
			continue
		}
		if cmd.Type() != ct {
			t.Errorf("type %d: decodes to %T of type %d", ct, cmd, cmd.Type())
		}
		if rid, ok := k.requestID(cmd); !ok || rid != "r" {
			t.Errorf("type %d: requestID = %q, %v; want the JSON body's rid", ct, rid, ok)
		}
		body, err := k.appendBinary(nil, cmd)
		if err != nil {
			t.Errorf("type %d: appendBinary: %v", ct, err)
			continue
		}
		back, err := k.decodeBinary(body)
		if err != nil || !reflect.DeepEqual(back, cmd) {
			t.Errorf("type %d: binary round trip = %#v, %v; want %#v", ct, back, err, cmd)
		}
		if _, err := k.decodeBinary(body[:len(body)-1]); err == nil {
			t.Errorf("type %d: a body short of its last byte decodes", ct)
		}
		if _, err := k.appendBinary(nil, foreign{}); !errors.Is(err, ErrUnknownType) {
			t.Errorf("type %d: appendBinary of another Go type = %v, want ErrUnknownType", ct, err)
		}
	}
}

// commandTypeConstants type-checks the package's own source (imports left unresolved: the
// constants need none) and returns every constant of type CommandType by name.
func commandTypeConstants(t *testing.T) map[string]CommandType {
	t.Helper()
	fset := token.NewFileSet()
	entries, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	conf := types.Config{
		Importer:         noImports{},
		IgnoreFuncBodies: true,
		Error:            func(error) {}, // unresolved imports; the constants do not need them
	}
	pkg, _ := conf.Check("fsm", fset, files, nil)
	typ := pkg.Scope().Lookup("CommandType")
	if typ == nil {
		t.Fatal("no type CommandType in the package source")
	}
	out := make(map[string]CommandType)
	for _, name := range pkg.Scope().Names() {
		c, ok := pkg.Scope().Lookup(name).(*types.Const)
		if !ok || !types.Identical(c.Type(), typ.Type()) {
			continue
		}
		v, exact := constant.Uint64Val(c.Val())
		if !exact || v > 255 {
			t.Fatalf("constant %s = %v is not a type byte", name, c.Val())
		}
		out[name] = CommandType(v)
	}
	return out
}

type noImports struct{}

func (noImports) Import(path string) (*types.Package, error) {
	return nil, errors.New("not imported")
}
