package cluster

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// hclogAdapter routes hashicorp/raft's hclog output into slog. raft logs a lot at DEBUG
// (every heartbeat failure, every pipeline start), so the floor is INFO unless the slog
// handler itself is more verbose and the adapter was built with a lower level.
type hclogAdapter struct {
	logger *slog.Logger
	name   string
	args   []any
	level  hclog.Level
}

func newHclogAdapter(logger *slog.Logger, level hclog.Level) hclog.Logger {
	return &hclogAdapter{logger: logger, level: level}
}

func toSlogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// routineOnFollower is raft's warning on a follower that was sent an AppendEntries for an
// entry it does not hold yet. Commit notices (notice.go) race the follower's own append now
// and then and are retried; a follower that really lags shows on the leader, which warns
// "appendEntries rejected, sending older logs". So on the follower it is debug.
const routineOnFollower = "failed to get previous log"

func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	if level == hclog.Warn && msg == routineOnFollower {
		level = hclog.Debug
	}
	if level < a.level {
		return
	}
	sl := toSlogLevel(level)
	ctx := context.Background()
	if !a.logger.Enabled(ctx, sl) {
		return
	}
	if a.name != "" {
		args = append([]any{"component", a.name}, args...)
	}
	args = append(args, a.args...)
	out := make([]any, 0, len(args))
	for i := 0; i < len(args); i++ {
		v := args[i]
		if i%2 == 1 {
			out = append(out, formatArg(v))
			continue
		}
		// raft names itself ("node", "leader" or "follower": "Node at 10.0.0.1:8429 [Leader]");
		// our loggers already carry node=<id>, and the state is in the message.
		if i+1 < len(args) {
			if _, self := args[i+1].(*raft.Raft); self {
				i++
				continue
			}
		}
		if v == "node" {
			v = "raft_node" // never a second node=
		}
		out = append(out, v)
	}
	a.logger.Log(ctx, sl, msg, out...)
}

// formatArg formats what slog would print raw: hclog.Fmt(format, args...) values (formatted
// by hclog's own writer, printed as the format string and a list by slog) and raft's server
// structs (printed as {Suffrage:Voter ID:... Address:...}).
func formatArg(v any) any {
	switch v := v.(type) {
	case hclog.Format:
		if len(v) > 0 {
			if format, ok := v[0].(string); ok {
				return fmt.Sprintf(format, formatArgs(v[1:])...)
			}
		}
	case raft.Server:
		return serverString(v)
	case []raft.Server:
		parts := make([]string, len(v))
		for i, s := range v {
			parts[i] = serverString(s)
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	return v
}

func formatArgs(vs []any) []any {
	out := make([]any, len(vs))
	for i, v := range vs {
		out[i] = formatArg(v)
	}
	return out
}

// serverString is "id@address", with the suffrage when it is not a voter.
func serverString(s raft.Server) string {
	str := string(s.ID) + "@" + string(s.Address)
	if s.Suffrage != raft.Voter {
		str += "(" + s.Suffrage.String() + ")"
	}
	return str
}

func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hclogAdapter) enabled(l hclog.Level) bool {
	return l >= a.level && a.logger.Enabled(context.Background(), toSlogLevel(l))
}
func (a *hclogAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }
func (a *hclogAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }
func (a *hclogAdapter) IsInfo() bool  { return a.enabled(hclog.Info) }
func (a *hclogAdapter) IsWarn() bool  { return a.enabled(hclog.Warn) }
func (a *hclogAdapter) IsError() bool { return a.enabled(hclog.Error) }

func (a *hclogAdapter) ImpliedArgs() []any { return a.args }

func (a *hclogAdapter) With(args ...any) hclog.Logger {
	c := *a
	c.args = append(append([]any(nil), a.args...), args...)
	return &c
}

func (a *hclogAdapter) Name() string { return a.name }

func (a *hclogAdapter) Named(name string) hclog.Logger {
	c := *a
	if c.name != "" {
		c.name += "." + name
	} else {
		c.name = name
	}
	return &c
}

func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *a
	c.name = name
	return &c
}

func (a *hclogAdapter) SetLevel(level hclog.Level) { a.level = level }
func (a *hclogAdapter) GetLevel() hclog.Level      { return a.level }

func (a *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(a.StandardWriter(opts), "", 0)
}

func (a *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		a.Info(strings.TrimSpace(string(p)))
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
