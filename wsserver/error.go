package wsserver

import (
	"errors"
	"fmt"
	"strconv"
)

// ErrClosed is wrapped by the errors of calls that fail because their channel
// closed, and by Channel.Err.
var ErrClosed = errors.New("channel closed")

// ErrRefused: the registry node answered the handshake with 503 (draining, fenced, at its
// connection limit). Behind one load-balancing address the next try may reach another node,
// so the agent retries without lengthening its backoff.
var ErrRefused = errors.New("registry node refused the connection")

// Error is an iocore failure: the status and message of a failure response.
// Status is numeric, or a string such as "ECONNABORTED" (then Status == 0 and
// Code != "").
type Error struct {
	Status  int
	Code    string
	Message string

	cause error // optional, for errors.Is (e.g. context.DeadlineExceeded on a timeout)
}

// NewError returns an *Error with a numeric status; handlers return it to
// choose the failure status.
func NewError(status int, format string, args ...any) *Error {
	if len(args) == 0 {
		return &Error{Status: status, Message: format}
	}
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Code != "" {
		return e.Code + ": " + e.Message
	}
	return strconv.Itoa(e.Status) + ": " + e.Message
}

// Unwrap returns the cause, if any: for an abort, the context error that
// triggered it (context.DeadlineExceeded on timeout).
func (e *Error) Unwrap() error { return e.cause }

// errAbort is what a call that timed out or was cancelled returns.
func errAbort(cause error) *Error {
	return &Error{Code: "ECONNABORTED", Message: "Abort", cause: cause}
}

// toFailure maps a handler error to a failure status and message.
func toFailure(err error) (status int, code, message string) {
	var e *Error
	if errors.As(err, &e) {
		if e.Code != "" {
			return 0, e.Code, e.Message
		}
		return e.Status, "", e.Message
	}
	return 500, "", err.Error()
}
