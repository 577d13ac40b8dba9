package auth

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Refuse writes the audit line of a refusal (rate-limited, at WARN) and calls OnRefusal
// (always). g is the grant of the token sent, if any; what says what was attempted.
func (a *Authority) Refuse(r *http.Request, g *Grant, what, reason string) {
	a.logRefusal(r.Context(), r.RemoteAddr, g, what, reason)
}

// RefuseFrom is Refuse for a refusal outside HTTP (a peer on the peer port, an agent's
// online): remote is the connection's address.
func (a *Authority) RefuseFrom(remote string, g *Grant, what, reason string) {
	a.logRefusal(context.Background(), remote, g, what, reason)
}

func (a *Authority) logRefusal(ctx context.Context, remote string, g *Grant, what, reason string) {
	if a.onRefusal != nil {
		a.onRefusal(reason)
	}
	ok, dropped := a.refusalLog.allow(a.now())
	if !ok {
		return
	}
	if dropped > 0 {
		a.log.LogAttrs(ctx, slog.LevelWarn, "refusals not logged", slog.Int("count", dropped))
	}
	if g == nil {
		g = GrantFrom(ctx)
	}
	a.log.LogAttrs(ctx, slog.LevelWarn, "refused",
		slog.String("audit", what),
		slog.String("remote", remote),
		slog.String("token", grantName(g)),
		slog.String("result", "refused: "+reason))
}

// Audit writes one line per mutation: who (the grant name Require stored, never the token),
// from where, what, and "ok" or the error text.
func (a *Authority) Audit(r *http.Request, what string, err error) {
	result := "ok"
	if err != nil {
		result = err.Error()
	}
	a.log.LogAttrs(r.Context(), slog.LevelInfo, "audit",
		slog.String("audit", what),
		slog.String("remote", r.RemoteAddr),
		slog.String("token", grantName(GrantFrom(r.Context()))),
		slog.String("result", result))
}

func grantName(g *Grant) string {
	if g == nil {
		return nameAnonymous
	}
	return g.Name
}

// Refusal lines are limited to this many per second (and bursts of as many), so a flood of
// bad requests cannot fill the disk; the metric still counts every one.
const refusalLogsPerSecond = 20

// logLimiter is a token bucket that remembers how many lines it dropped.
type logLimiter struct {
	mu      sync.Mutex
	tokens  float64
	last    time.Time
	dropped int
}

// allow reports whether a line may be written now and, if so, how many were dropped since
// the last one written.
func (l *logLimiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last.IsZero() {
		l.tokens = refusalLogsPerSecond
	} else if d := now.Sub(l.last); d > 0 {
		l.tokens = min(refusalLogsPerSecond, l.tokens+d.Seconds()*refusalLogsPerSecond)
	}
	if now.After(l.last) {
		l.last = now
	}
	if l.tokens < 1 {
		l.dropped++
		return false, 0
	}
	l.tokens--
	dropped := l.dropped
	l.dropped = 0
	return true, dropped
}
