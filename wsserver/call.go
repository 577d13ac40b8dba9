package wsserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// callState is the channel's side of calling the peer. dispatch (dispatch.go) hands each
// response to the call waiting for it.
type callState struct {
	nextID  atomic.Int64 // our own message counter (requests and aborts)
	mu      sync.Mutex
	pending map[int64]chan callResult // our outstanding requests, by id
}

type callResult struct {
	resp response
	err  error
}

// Call sends a request and waits for its response. props is marshalled with
// encoding/json (a json.RawMessage passes through; nil sends []). timeout <= 0
// means DefaultCallTimeout (30 s). On timeout or ctx cancellation an abort
// frame is sent and the call fails with &Error{Code: "ECONNABORTED", Message:
// "Abort"} (which wraps the context error). If the channel closes first, the error wraps ErrClosed.
// A failure response gives an *Error with the peer's status and message. The
// result is nil when the response had no data key.
func (c *Channel) Call(ctx context.Context, protocol, cmd string, props any, timeout time.Duration) (json.RawMessage, error) {
	p, err := marshalProps(props)
	if err != nil {
		return nil, fmt.Errorf("wsserver: call %s:/%s: props: %w", protocol, cmd, err)
	}
	if timeout <= 0 {
		timeout = DefaultCallTimeout
	}
	if c.isDead() {
		return nil, fmt.Errorf("wsserver: call %s:/%s to %s: %w", protocol, cmd, c.key, ErrClosed)
	}
	id := c.calls.nextID.Add(1) - 1
	frame := appendRequest(make([]byte, 0, 64+len(protocol)+len(cmd)+len(p)), id, true, protocol, cmd, p)
	rc := make(chan callResult, 1)
	c.calls.mu.Lock()
	c.calls.pending[id] = rc
	c.calls.mu.Unlock()
	forget := func() {
		c.calls.mu.Lock()
		delete(c.calls.pending, id)
		c.calls.mu.Unlock()
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	// A call waits for room in the send queue (back-pressure on the caller)
	// rather than treating a burst of calls as a slow consumer.
	select {
	case c.writer.sendq <- frame:
		c.kick(false) // not inline: a blocked write would outlast the call's timeout
	case <-c.dead:
		forget()
		return nil, fmt.Errorf("wsserver: call %s:/%s to %s: %w", protocol, cmd, c.key, ErrClosed)
	case <-timer.C:
		forget()
		return nil, errAbort(context.DeadlineExceeded)
	case <-ctx.Done():
		forget()
		return nil, errAbort(ctx.Err())
	}
	var cause error
	select {
	case r := <-rc:
		return r.result()
	case <-c.dead:
		forget()
		// A response may have raced the close.
		select {
		case r := <-rc:
			return r.result()
		default:
		}
		return nil, fmt.Errorf("wsserver: call %s:/%s to %s: %w", protocol, cmd, c.key, ErrClosed)
	case <-timer.C:
		cause = context.DeadlineExceeded
	case <-ctx.Done():
		cause = ctx.Err()
	}
	forget()
	select {
	case r := <-rc: // answered just in time
		return r.result()
	default:
	}
	abortID := c.calls.nextID.Add(1) - 1
	_ = c.enqueue(appendAbort(make([]byte, 0, 64), abortID, id), false)
	return nil, errAbort(cause)
}

func (r callResult) result() (json.RawMessage, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.resp.code != "" {
		return nil, &Error{Code: r.resp.code, Message: r.resp.message}
	}
	if r.resp.status != 200 {
		return nil, &Error{Status: r.resp.status, Message: r.resp.message}
	}
	if !r.resp.hasData {
		return nil, nil
	}
	return json.RawMessage(r.resp.data), nil
}

func marshalProps(props any) ([]byte, error) {
	switch v := props.(type) {
	case nil:
		return []byte("[]"), nil
	case json.RawMessage:
		if v == nil {
			return []byte("[]"), nil
		}
		if !validJSON(v) {
			return nil, errors.New("invalid JSON in json.RawMessage")
		}
		return v, nil
	default:
		return json.Marshal(props)
	}
}
