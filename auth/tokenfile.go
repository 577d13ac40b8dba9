package auth

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"strings"
)

// load reads the token file into a new grant set that also holds the flag tokens. It
// changes nothing in a, so a broken file leaves the tokens in use untouched.
func (a *Authority) load() (*grantSet, error) {
	data, err := os.ReadFile(a.file)
	if err != nil {
		return nil, fmt.Errorf("token file: %w", err)
	}
	fileEntries, err := parseTokenFile(a.file, data, a.flags, a.warn)
	if err != nil {
		return nil, err
	}
	entries := make([]entry, 0, len(a.flags)+len(fileEntries))
	entries = append(entries, a.flags...)
	entries = append(entries, fileEntries...)
	return &grantSet{entries: entries, fileGrants: len(fileEntries)}, nil
}

func (a *Authority) warn(msg string, args ...any) { a.log.Warn(msg, args...) }

// parseTokenFile parses the format described in the package comment. flags are the tokens
// already taken by --admin-token and --agent-token. Errors and warnings carry the file name
// and line number but never a token, nor a field that might be one.
func parseTokenFile(file string, data []byte, flags []entry, warn func(string, ...any)) ([]entry, error) {
	type seen struct {
		line int
		name string
	}
	names := map[string]int{}
	digests := map[[sha256.Size]byte]seen{}
	for _, f := range flags {
		digests[f.digest] = seen{name: f.grant.Name}
	}
	var out []entry
	sc := bufio.NewScanner(bytes.NewReader(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))))
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		fail := func(format string, args ...any) error {
			return fmt.Errorf("%s:%d: %s", file, n, fmt.Sprintf(format, args...))
		}
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 3 && len(fields) != 4 {
			return nil, fail("want NAME SCOPES TOKEN [NAMESPACES], got %d fields", len(fields))
		}
		name, token := fields[0], fields[2]
		switch name {
		case nameAdminFlag, nameAgentFlag, nameTrusted, nameAnonymous:
			return nil, fail("name %q is reserved", name)
		}
		scopes, unknown := parseScopes(fields[1])
		if len(unknown) > 0 {
			if !allScopeLike(unknown) {
				// Likely a token written in the SCOPES field: do not show it.
				return nil, fail("grant %q: unknown scope in the SCOPES field, not shown since it may be a token (want NAME SCOPES TOKEN; scopes: %s)", name, knownScopes)
			}
			return nil, fail("grant %q: unknown scope %s (known: %s)", name, quoteList(unknown), knownScopes)
		}
		if scopes == 0 {
			return nil, fail("grant %q: no scope given (known: %s)", name, knownScopes)
		}
		if first, dup := names[name]; dup {
			return nil, fail("duplicate name %q (first on line %d)", name, first)
		}
		names[name] = n
		d := sha256.Sum256([]byte(token))
		if prev, dup := digests[d]; dup {
			if prev.line == 0 {
				return nil, fail("grant %q has the same token as --%s", name, prev.name)
			}
			return nil, fail("grant %q has the same token as grant %q (line %d)", name, prev.name, prev.line)
		}
		digests[d] = seen{line: n, name: name}
		g := &Grant{Name: name, Scopes: scopes}
		if len(fields) == 4 {
			for p := range strings.SplitSeq(fields[3], ",") {
				if p == "" {
					return nil, fail("grant %q: empty namespace pattern", name)
				}
				g.Namespaces = append(g.Namespaces, p)
			}
			if scopes&ScopeAgent == 0 {
				warn("namespace patterns have no effect without scope agent", "file", file, "line", n, "grant", name)
			}
		}
		if len(token) < minTokenLen {
			warn("token shorter than 16 characters", "file", file, "line", n, "grant", name)
		}
		g.digest = d
		out = append(out, entry{digest: d, grant: g})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("token file %s: %w", file, err)
	}
	return out, nil
}

// allScopeLike reports whether every name looks like a mistyped scope (a short lowercase
// word) rather than a token, so that it is safe to repeat in an error.
func allScopeLike(names []string) bool {
	for _, n := range names {
		if len(n) > 12 {
			return false
		}
		for i := 0; i < len(n); i++ {
			if c := n[i]; (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') {
				return false
			}
		}
	}
	return true
}
