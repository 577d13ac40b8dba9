package cluster

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The layering the design promises, checked on every file of the module (tests included):
// only cluster/ (and fsm/, which implements raft's FSM interface) import hashicorp/raft;
// wsserver/ knows nothing of raft or the cluster; cluster/ never imports wsserver/.
func TestLayout_RaftStaysInsideClusterAndFSM(t *testing.T) {
	const module = "github.com/wsregistry/wsregistry/"
	rules := []struct {
		importPrefix string
		allowedIn    func(dir string) bool
	}{
		{"github.com/hashicorp/raft", func(dir string) bool { return dir == "cluster" || dir == "fsm" }},
		{module + "cluster", func(dir string) bool { return !strings.HasPrefix(dir, "wsserver") && !strings.HasPrefix(dir, "fsm") }},
		{module + "wsserver", func(dir string) bool { return dir != "cluster" && dir != "fsm" }},
	}
	fset := token.NewFileSet()
	checked := 0
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "deploy" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != ".." {
			return filepath.SkipDir // deploy/ is a module of its own
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		dir := filepath.ToSlash(filepath.Dir(strings.TrimPrefix(path, "../")))
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			for _, r := range rules {
				if (p == r.importPrefix || strings.HasPrefix(p, r.importPrefix+"/")) && !r.allowedIn(dir) {
					t.Errorf("%s imports %s", path, p)
				}
			}
		}
		checked++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("only %d Go files found: is the walk looking at the module?", checked)
	}
}
