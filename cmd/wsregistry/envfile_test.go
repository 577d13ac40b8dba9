package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestEnvFile_ReadsOnlyTheAdminTokenAsComposeDoes(t *testing.T) {
	const key = "WSREGISTRY_ADMIN_TOKEN"
	for name, tc := range map[string]struct {
		file  string
		want  string
		found bool
	}{
		"plain":                    {"WSREGISTRY_CLUSTER_KEY=k\nWSREGISTRY_ADMIN_TOKEN=abc123\n", "abc123", true},
		"double quotes":            {`WSREGISTRY_ADMIN_TOKEN="abc 123"`, "abc 123", true},
		"single quotes":            {"WSREGISTRY_ADMIN_TOKEN='a#b'  # note", "a#b", true},
		"inline comment":           {"WSREGISTRY_ADMIN_TOKEN=abc # made by hand\n", "abc", true},
		"hash inside the value":    {"WSREGISTRY_ADMIN_TOKEN=a#b", "a#b", true},
		"export and blanks":        {"\n  export WSREGISTRY_ADMIN_TOKEN = abc \r\n", "abc", true},
		"comment line":             {"# WSREGISTRY_ADMIN_TOKEN=old\n", "", false},
		"later line wins":          {"WSREGISTRY_ADMIN_TOKEN=one\nWSREGISTRY_ADMIN_TOKEN=two\n", "two", true},
		"other keys only":          {"WSREGISTRY_ADMIN_TOKEN_OLD=x\nXWSREGISTRY_ADMIN_TOKEN=y\nnot a line\n", "", false},
		"empty value":              {"WSREGISTRY_ADMIN_TOKEN=\n", "", true},
		"unterminated other key":   {"OTHER=\"abc\nWSREGISTRY_ADMIN_TOKEN=t\n", "t", true},
		"value with equals signs":  {"WSREGISTRY_ADMIN_TOKEN=a=b=", "a=b=", true},
		"windows line ends, quote": {"WSREGISTRY_ADMIN_TOKEN=\"abc\"\r\n", "abc", true},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), ".env")
			if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			got, found, err := readDotEnv(path, key)
			if err != nil || got != tc.want || found != tc.found {
				t.Fatalf("readDotEnv = %q, %v, %v; want %q, %v", got, found, err, tc.want, tc.found)
			}
		})
	}

	path := filepath.Join(t.TempDir(), ".env")
	os.WriteFile(path, []byte("WSREGISTRY_ADMIN_TOKEN=\"s3cret-unterminated\n"), 0o600)
	if _, _, err := readDotEnv(path, key); err == nil || !strings.Contains(err.Error(), "line 1") || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("unterminated quote: err %v; want an error naming the line and not the value", err)
	}
	if _, found, err := readDotEnv(filepath.Join(t.TempDir(), ".env"), key); found || err != nil {
		t.Fatalf("missing file: found %v, err %v; want neither", found, err)
	}
}

// inDirWithDotEnv makes a fresh working directory holding a .env with content (none when
// content is empty) and clears WSREGISTRY_ADMIN_TOKEN for the test.
func inDirWithDotEnv(t *testing.T, content string) {
	t.Helper()
	dir := t.TempDir()
	if content != "" {
		if err := os.WriteFile(filepath.Join(dir, ".env"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Chdir(dir)
	t.Setenv("WSREGISTRY_ADMIN_TOKEN", "") // restored after the test
	os.Unsetenv("WSREGISTRY_ADMIN_TOKEN")
}

func TestCLI_AdminTokenFromDotEnvWhenNoFlagOrEnv(t *testing.T) {
	n := startTestNode(t, "s3cret-admin-token")
	authorized := func(code int, errOut string) bool {
		return code != 0 && strings.Contains(errOut, "no member with id ghost")
	}

	inDirWithDotEnv(t, "# made by scripts/compose-env.sh\nWSREGISTRY_CLUSTER_KEY=ck\nWSREGISTRY_ADMIN_TOKEN=s3cret-admin-token\n")
	code, out, errOut := runCLI("remove", "ghost", "--addr", n.HTTPAddr())
	if !authorized(code, errOut) {
		t.Fatalf("token from ./.env: exit %d, stdout %q, stderr %q; want the call authorized", code, out, errOut)
	}
	if strings.Contains(out+errOut, "s3cret") {
		t.Fatalf("the token was printed: %q %q", out, errOut)
	}

	// The flag and the environment win over the file, even when empty.
	code, _, errOut = runCLI("remove", "ghost", "--addr", n.HTTPAddr(), "--admin-token", "wrong")
	if code == 0 || !strings.Contains(errOut, "401") || strings.Contains(errOut, ".env") {
		t.Fatalf("--admin-token wrong beside a right .env: exit %d, stderr %q; want 401 not blaming .env", code, errOut)
	}
	t.Setenv("WSREGISTRY_ADMIN_TOKEN", "wrong")
	code, _, errOut = runCLI("remove", "ghost", "--addr", n.HTTPAddr())
	if code == 0 || !strings.Contains(errOut, "401") {
		t.Fatalf("WSREGISTRY_ADMIN_TOKEN=wrong beside a right .env: exit %d, stderr %q; want 401", code, errOut)
	}
	code, _, errOut = runCLI("remove", "ghost", "--addr", n.HTTPAddr(), "--admin-token", "s3cret-admin-token")
	if !authorized(code, errOut) {
		t.Fatalf("--admin-token right over WSREGISTRY_ADMIN_TOKEN=wrong: exit %d, stderr %q", code, errOut)
	}

	// No token anywhere: the error says where the CLI would have found one.
	inDirWithDotEnv(t, "")
	code, _, errOut = runCLI("remove", "ghost", "--addr", n.HTTPAddr())
	if code == 0 || !strings.Contains(errOut, "401") || !strings.Contains(errOut, "no token was sent") || !strings.Contains(errOut, ".env") {
		t.Fatalf("no token at all: exit %d, stderr %q; want 401 pointing at .env", code, errOut)
	}

	// A stale .env: the error says where the token came from, never the token.
	inDirWithDotEnv(t, "WSREGISTRY_ADMIN_TOKEN='stale-token-value'\n")
	code, out, errOut = runCLI("remove", "ghost", "--addr", n.HTTPAddr())
	if code == 0 || !strings.Contains(errOut, "401") || !strings.Contains(errOut, ".env") || strings.Contains(out+errOut, "stale-token-value") {
		t.Fatalf("stale .env: exit %d, stdout %q, stderr %q; want 401 naming .env but not the token", code, out, errOut)
	}
}

func TestCLI_EmptyEnvTokenIgnoresDotEnv(t *testing.T) {
	// No token configured: loopback callers are trusted, and any token sent is refused (401),
	// which tells whether the CLI sent the file's token.
	n := startTestNode(t, "")
	inDirWithDotEnv(t, "WSREGISTRY_ADMIN_TOKEN=from-the-file\n")
	if code, _, errOut := runCLI("remove", "ghost", "--addr", n.HTTPAddr()); code == 0 || !strings.Contains(errOut, "401") {
		t.Fatalf("without flag or env the file's token must be sent: exit %d, stderr %q", code, errOut)
	}
	t.Setenv("WSREGISTRY_ADMIN_TOKEN", "")
	if code, _, errOut := runCLI("remove", "ghost", "--addr", n.HTTPAddr()); code == 0 || !strings.Contains(errOut, "no member with id ghost") {
		t.Fatalf("WSREGISTRY_ADMIN_TOKEN= (empty) must send no token: exit %d, stderr %q", code, errOut)
	}
}

func TestCLI_UnreadableDotEnvWarnsAndReadsStillWork(t *testing.T) {
	n := startTestNode(t, "")
	inDirWithDotEnv(t, "")
	if err := os.Mkdir(".env", 0o700); err != nil { // a directory: reading it fails
		t.Fatal(err)
	}
	code, out, errOut := runCLI("where", "svc", "--addr", n.HTTPAddr())
	if code != 0 || !strings.HasPrefix(out, "127.0.0.1:") || !strings.Contains(errOut, "not using .env") {
		t.Fatalf("where beside a broken .env: exit %d, stdout %q, stderr %q; want the answer and a warning", code, out, errOut)
	}
	if code, out, errOut := runCLI("where", "svc", "--addr", n.HTTPAddr(), "--admin-token", ""); code != 0 || errOut != "" {
		t.Fatalf("with --admin-token given the file is not read: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
