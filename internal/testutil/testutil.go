// Package testutil holds the waiting helpers every test package uses: deadlines that
// stretch on slow machines, and waiting on a condition instead of sleeping.
package testutil

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// Scaled stretches a test deadline by WSREGISTRY_TEST_SCALE (e.g. 3 on a loaded machine).
func Scaled(d time.Duration) time.Duration {
	if f, err := strconv.ParseFloat(os.Getenv("WSREGISTRY_TEST_SCALE"), 64); err == nil && f > 0 {
		return time.Duration(float64(d) * f)
	}
	return d
}

// Eventually polls cond until it holds, failing the test with msg when the (scaled)
// deadline passes first.
func Eventually(t testing.TB, within time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(Scaled(within))
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: "+msg, append([]any{within}, args...)...)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
