package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The repository's documentation is read on its own (GitHub, a checkout): every relative link
// in README.md and docs/*.md must name a file or directory of this repository. Links that leave
// it (../shared is only on developers' machines) are broken for everyone else even when they
// resolve here.
func TestDocs_RelativeLinksResolveInsideTheRepository(t *testing.T) {
	root := docsRepoRoot(t)
	files := []string{filepath.Join(root, "README.md")}
	more, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(more)
	files = append(files, more...)

	checked := 0
	for _, file := range files {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("reading %s: %v", file, err)
		}
		name, _ := filepath.Rel(root, file)
		for _, l := range docsLinks(string(text)) {
			skipped, err := docsCheckLink(root, file, l.target)
			if err != nil {
				t.Errorf("%s:%d: link %q: %v", filepath.ToSlash(name), l.line, l.target, err)
			}
			if !skipped {
				checked++
			}
		}
	}
	if checked == 0 {
		// README.md links to docs/ and other files: finding none means the extraction broke.
		t.Fatalf("no relative links found in %d files: the link extraction is broken", len(files))
	}
	t.Logf("%d relative links checked in %d files", checked, len(files))
}

// The checker itself, on a made-up repository: what it reports and what it leaves alone.
func TestDocs_LinkCheckerReportsBrokenAndOutsideLinks(t *testing.T) {
	root := t.TempDir()
	for _, f := range []string{"README.md", "docs/guide.md", "docs/other.md", "pkg/DESIGN.md"} {
		p := filepath.Join(root, filepath.FromSlash(f))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("# x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	md := strings.Join([]string{
		"See [other](other.md), [design](../pkg/DESIGN.md#files) and [the dir](../pkg/).",
		"A [root link](/README.md), an ![image](missing.png) and [a broken one](nope.md#x).",
		"[shared](../../shared/PROTOCOL.md) and [outside](../../elsewhere.md) leave the repository.",
		"[web](https://example.com/x.md), [mail](mailto:ops@example.com), [anchor](#section),",
		"[plain http](http://example.com), [file scheme](file:///etc/passwd).",
		"Code spans are not links: `[no](code-span.md)`, ``[no](`double`.md)``.",
		"[escaped](a%20b.md) [with title](other.md \"Title\") [angle](<other.md>)",
		"",
		"```",
		"[no](fenced.md)",
		"```",
		"",
		"    [no](indented-code.md)",
		"",
		"- a list item",
		"",
		"    [yes](list-continuation.md)",
		"",
		"[ref]: missing-ref.md",
		"[ref2]: other.md \"fine\"",
	}, "\n")
	var broken []string
	for _, l := range docsLinks(md) {
		if _, err := docsCheckLink(root, filepath.Join(root, "docs", "guide.md"), l.target); err != nil {
			broken = append(broken, l.target)
		}
	}
	want := []string{
		"missing.png", "nope.md#x",
		"../../shared/PROTOCOL.md", "../../elsewhere.md",
		"file:///etc/passwd",
		"a%20b.md",
		"list-continuation.md",
		"missing-ref.md",
	}
	if !slices.Equal(broken, want) {
		t.Errorf("reported %q\nwant     %q", broken, want)
	}
	if _, err := docsCheckLink(root, filepath.Join(root, "README.md"), "../shared/PROTOCOL.md"); err == nil || !strings.Contains(err.Error(), "shared") {
		t.Errorf("a link into ../shared: got %v, want an error naming shared", err)
	}
}

// docsRepoRoot finds the repository root (the directory with this module's go.mod) above the
// test's working directory.
func docsRepoRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil &&
			strings.Contains(string(b), "module github.com/wsregistry/wsregistry\n") {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("repository root (go.mod of github.com/wsregistry/wsregistry) not found above the working directory")
		}
		dir = parent
	}
}

type docsLink struct {
	line   int // 1-based
	target string
}

var (
	docsInlineLink = regexp.MustCompile(`\]\(\s*(<[^>\n]*>|[^\s)]+)`)
	docsRefDef     = regexp.MustCompile(`^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)`)
	docsHref       = regexp.MustCompile(`(?i)<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*"([^"]*)"`)
	docsFence      = regexp.MustCompile("^\\s*(`{3,}|~{3,})")
	docsListItem   = regexp.MustCompile(`^ {0,3}([-*+]|[0-9]{1,9}[.)])(\s|$)`)
)

// docsLinks returns the link targets of a Markdown text: inline links and images
// ([text](target), ![alt](target)), reference definitions ([ref]: target) and HTML a/img
// tags, leaving out what sits in code (fenced blocks, indented blocks, code spans).
func docsLinks(md string) []docsLink {
	var out []docsLink
	var fence string  // the opening fence while inside a fenced block
	inList := false   // after a list item, indented lines continue it rather than start code
	prevBlank := true // the previous line was blank (or there was none)
	prevCode := false // the previous line belonged to an indented code block
	for i, line := range strings.Split(md, "\n") {
		blank := strings.TrimSpace(line) == ""
		if fence != "" {
			if m := docsFence.FindStringSubmatch(line); m != nil && m[1][0] == fence[0] &&
				len(m[1]) >= len(fence) && strings.TrimSpace(strings.TrimLeft(line, " \t"+m[1][:1])) == "" {
				fence = ""
			}
			continue
		}
		indent := docsIndent(line)
		if !blank && indent >= 4 && !inList && (prevBlank || prevCode) {
			prevCode, prevBlank = true, false
			continue // indented code block
		}
		if !blank || !prevCode {
			prevCode = false
		}
		if m := docsFence.FindStringSubmatch(line); m != nil {
			fence = m[1]
			prevBlank = false
			continue
		}
		switch {
		case blank:
		case docsListItem.MatchString(line):
			inList = true
		case indent == 0 && (prevBlank || strings.HasPrefix(line, "#")):
			inList = false // a new paragraph or a heading ends the list
		}
		prevBlank = blank

		text := docsStripCodeSpans(line)
		add := func(target string) {
			target = strings.TrimSuffix(strings.TrimPrefix(target, "<"), ">")
			out = append(out, docsLink{line: i + 1, target: target})
		}
		if m := docsRefDef.FindStringSubmatch(text); m != nil {
			add(m[1])
		}
		for _, m := range docsInlineLink.FindAllStringSubmatch(text, -1) {
			add(m[1])
		}
		for _, m := range docsHref.FindAllStringSubmatch(text, -1) {
			add(m[1])
		}
	}
	return out
}

// docsIndent is the width of a line's leading whitespace, a tab counting as 4.
func docsIndent(line string) int {
	n := 0
	for _, c := range line {
		switch c {
		case ' ':
			n++
		case '\t':
			n += 4 - n%4
		default:
			return n
		}
	}
	return n
}

// docsStripCodeSpans blanks out code spans (a run of n backticks up to the next run of exactly
// n), so that link syntax shown as code is not taken for a link.
func docsStripCodeSpans(line string) string {
	b := []byte(line)
	for i := 0; i < len(b); {
		if b[i] != '`' {
			i++
			continue
		}
		n := 0
		for i+n < len(b) && b[i+n] == '`' {
			n++
		}
		end := -1
		for j := i + n; j < len(b); {
			if b[j] != '`' {
				j++
				continue
			}
			m := 0
			for j+m < len(b) && b[j+m] == '`' {
				m++
			}
			if m == n {
				end = j + m
				break
			}
			j += m
		}
		if end < 0 {
			i += n // an unmatched run is literal text
			continue
		}
		for k := i; k < end; k++ {
			b[k] = ' '
		}
		i = end
	}
	return string(b)
}

var docsScheme = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*:`)

// docsCheckLink checks one link target of the Markdown file mdFile against the repository at
// root. skipped reports targets that are not relative links (web and mail addresses, anchors in
// the same page); err says why a relative one is broken.
func docsCheckLink(root, mdFile, target string) (skipped bool, err error) {
	switch {
	case target == "", strings.HasPrefix(target, "#"):
		return true, nil
	case strings.HasPrefix(target, "//"):
		return true, nil // scheme-relative: a web address
	case docsScheme.MatchString(target):
		switch strings.ToLower(target[:strings.IndexByte(target, ':')]) {
		case "http", "https", "mailto":
			return true, nil
		}
		return false, errors.New("not a relative link and not http(s) or mailto: readers cannot follow it")
	}
	p := target
	if i := strings.IndexAny(p, "#?"); i >= 0 {
		p = p[:i]
	}
	if p == "" {
		return true, nil
	}
	p, err = url.PathUnescape(p)
	if err != nil {
		return false, fmt.Errorf("bad escape: %v", err)
	}
	var abs string
	if strings.HasPrefix(p, "/") {
		abs = filepath.Join(root, filepath.FromSlash(p)) // as GitHub reads it: from the repository root
	} else {
		abs = filepath.Join(filepath.Dir(mdFile), filepath.FromSlash(p))
	}
	rel, err := filepath.Rel(root, abs)
	if err != nil {
		return false, err
	}
	rel = filepath.ToSlash(rel)
	if rel == ".." || strings.HasPrefix(rel, "../") {
		if outside := strings.TrimPrefix(rel, "../"); outside == "shared" || strings.HasPrefix(outside, "shared/") {
			return false, errors.New("points into ../shared, which users of the repository never see: link a document in the repository (docs/) instead")
		}
		return false, fmt.Errorf("points outside the repository (%s)", rel)
	}
	if _, err := os.Stat(abs); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("%s does not exist in the repository", rel)
		}
		return false, err
	}
	return false, nil
}
