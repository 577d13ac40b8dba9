package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
)

// Internal endpoints between nodes, served on the peer port only (internal.go).
const (
	pathPropose   = "/internal/v1/propose"
	pathJoin      = "/internal/v1/join"
	pathInfo      = "/internal/v1/info"
	pathRemove    = "/internal/v1/remove"
	pathReadIndex = "/internal/v1/readindex"
	pathRestore   = "/internal/v1/restore"
	pathHealth    = "/internal/v1/health"
)

// ErrForward marks a failure to reach or be served by the leader: retry, the proposal
// carries request ids.
var ErrForward = errors.New("forward to leader failed")

// forwardedHeader marks a request a node passed on to its leader, so it is never passed on again.
const forwardedHeader = "X-Wsregistry-Forwarded"

// peerClient makes internal calls to other nodes' peer ports: HTTP over connections that
// passed the peer handshake (and the fault switch, through the stream layer).
type peerClient struct {
	http    *http.Client
	streams *fwdClient // forwarded writes (fwdstream.go); HTTP for leaders that refuse it
}

// peerCallTimeout bounds one internal call: a leader that does not answer within it is
// treated as gone, and the write is retried on whoever leads next.
const peerCallTimeout = 10 * time.Second

func newPeerClient(layer *streamLayer) *peerClient {
	return &peerClient{streams: newFwdClient(layer), http: &http.Client{Timeout: peerCallTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return layer.dial(ctx, addr, kindInternal)
		},
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Minute,
	}}}
}

func (c *peerClient) close() {
	c.streams.close()
	c.http.CloseIdleConnections()
}

// call posts body (bytes as they are, anything else as JSON) to addr's peer port and decodes
// a JSON answer into out.
func (c *peerClient) call(ctx context.Context, method, addr, path string, body any, out any, forwarded bool) (int, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		js, err := json.Marshal(b)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(js)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, rd)
	if err != nil {
		return 0, err
	}
	if forwarded {
		req.Header.Set(forwardedHeader, "1")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s answered %d with a body that is not JSON: %.200s", method, path, resp.StatusCode, data)
		}
	}
	return resp.StatusCode, nil
}

// post makes a call whose answer is {"error": ...} unless it is 200.
func (c *peerClient) post(ctx context.Context, addr, path string, body any, forwarded bool) error {
	var out map[string]string
	status, err := c.call(ctx, http.MethodPost, addr, path, body, &out, forwarded)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("%s%s answered %d: %s", addr, path, status, out["error"])
	}
	return nil
}

// proposeReply is the leader's answer to a forwarded proposal.
type proposeReply struct {
	Index   uint64         `json:"index"`
	Results []*resultError `json:"results"`
	Error   string         `json:"error,omitempty"`
	Retry   bool           `json:"retry,omitempty"`
}

// resultError carries a command's error class across the wire so errors.Is keeps working.
type resultError struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

func encodeResults(errs []error) []*resultError {
	out := make([]*resultError, len(errs))
	for i, err := range errs {
		if err == nil {
			continue
		}
		kind := "other"
		switch {
		case errors.Is(err, fsm.ErrInvalid):
			kind = "invalid"
		case errors.Is(err, fsm.ErrSessionClosed):
			kind = "session_closed"
		}
		out[i] = &resultError{Kind: kind, Message: err.Error()}
	}
	return out
}

func decodeResults(in []*resultError) []error {
	out := make([]error, len(in))
	for i, r := range in {
		if r == nil {
			continue
		}
		switch r.Kind {
		case "invalid":
			out[i] = fmt.Errorf("%w (from leader: %s)", fsm.ErrInvalid, r.Message)
		case "session_closed":
			out[i] = fmt.Errorf("%w (from leader: %s)", fsm.ErrSessionClosed, r.Message)
		default:
			out[i] = errors.New(r.Message)
		}
	}
	return out
}

// forward sends a proposal to the leader's peer port, over the forward stream unless the
// leader refuses it, and returns its index and results.
// binary picks the encoding of the body (see Node.BinaryBatches); the leader reads both.
func (c *peerClient) forward(ctx context.Context, leader string, cmds []fsm.Command, binary bool) (uint64, []error, error) {
	body, err := encodeBatch(cmds, binary)
	if err != nil {
		return 0, nil, err
	}
	reply, ok, err := c.streams.call(ctx, leader, body)
	if errors.Is(err, errBatchTooLarge) {
		return 0, nil, err
	}
	if ok {
		if err != nil {
			return 0, nil, fmt.Errorf("%w: %v", ErrForward, err)
		}
		if reply.Error != "" {
			return 0, nil, fmt.Errorf("%w: leader %s answered: %s", ErrForward, leader, reply.Error)
		}
		return reply.Index, decodeResults(reply.Results), nil
	}
	status, err := c.call(ctx, http.MethodPost, leader, pathPropose, body, &reply, false)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %v", ErrForward, err)
	}
	if status != http.StatusOK {
		return 0, nil, fmt.Errorf("%w: leader %s answered %d: %s", ErrForward, leader, status, reply.Error)
	}
	return reply.Index, decodeResults(reply.Results), nil
}

// info asks the node at addr (its peer port) to describe itself.
func (c *peerClient) info(ctx context.Context, addr string) (Info, error) {
	var info Info
	status, err := c.call(ctx, http.MethodGet, addr, pathInfo, nil, &info, false)
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("%s answered %d", addr, status)
	}
	return info, err
}

// readIndex asks the leader for an index that covers every write committed before the call.
func (c *peerClient) readIndex(ctx context.Context, leader string) (uint64, error) {
	var out struct {
		Index uint64 `json:"index"`
		Error string `json:"error"`
	}
	status, err := c.call(ctx, http.MethodPost, leader, pathReadIndex, nil, &out, false)
	if err == nil && status != http.StatusOK {
		err = fmt.Errorf("leader %s answered %d: %s", leader, status, out.Error)
	}
	return out.Index, err
}
