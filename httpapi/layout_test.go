package httpapi

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The API depends on the node only through the interfaces declared here: it imports neither
// the node package (which wires it) nor raft (cluster/layout_test.go checks raft module-wide).
func TestLayout_NoRegistryNorRaftImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil || len(files) == 0 {
		t.Fatalf("no Go files found: %v", err)
	}
	fset := token.NewFileSet()
	for _, path := range files {
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if p == "github.com/wsregistry/wsregistry/registry" || strings.HasPrefix(p, "github.com/wsregistry/wsregistry/registry/") ||
				strings.HasPrefix(p, "github.com/hashicorp/raft") {
				t.Errorf("%s imports %s", path, p)
			}
		}
	}
}
