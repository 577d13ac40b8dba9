package cluster

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/wsregistry/wsregistry/fsm"
)

// Internal HTTP endpoints between nodes. They sit on the HTTP port behind the cluster key.
const (
	PathPropose = "/internal/v1/propose"
	PathJoin    = "/internal/v1/join"
	PathInfo    = "/internal/v1/info"
	PathRemove  = "/internal/v1/remove"

	// ClusterKeyHeader carries the cluster key on internal calls.
	ClusterKeyHeader = "X-Wsregistry-Cluster-Key"
)

// ErrForward marks a failure to reach or be served by the leader: retry, the proposal
// carries request ids.
var ErrForward = errors.New("forward to leader failed")

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

// Client makes internal calls to other nodes.
type Client struct {
	HTTP       *http.Client
	ClusterKey string
	Scheme     string      // "http" or "https"
	Blocked    func() bool // fault switch: calls fail while it returns true
}

var errBlocked = errors.New("internal call blocked by fault switch")

// NewClient returns a client with short timeouts: a leader that does not answer within
// them is treated as gone, and the write is retried on whoever leads next. With tlsConfig
// the calls go over HTTPS (presenting its client certificate).
func NewClient(clusterKey string, tlsConfig *tls.Config) *Client {
	c := &Client{
		HTTP: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute, TLSClientConfig: tlsConfig,
		}},
		ClusterKey: clusterKey,
		Scheme:     "http",
	}
	if tlsConfig != nil {
		c.Scheme = "https"
	}
	return c
}

// forwardedHeader marks a request a node passed on to its leader, so it is never passed on again.
const forwardedHeader = "X-Wsregistry-Forwarded"

func (c *Client) do(ctx context.Context, method, addr, path string, body any, out any) (int, error) {
	return c.send(ctx, method, addr, path, body, out, false)
}

func (c *Client) send(ctx context.Context, method, addr, path string, body any, out any, forwarded bool) (int, error) {
	if c.Blocked != nil && c.Blocked() {
		return 0, errBlocked
	}
	var rd io.Reader
	if body != nil {
		switch b := body.(type) {
		case []byte:
			rd = bytes.NewReader(b)
		default:
			js, err := json.Marshal(b)
			if err != nil {
				return 0, err
			}
			rd = bytes.NewReader(js)
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Scheme+"://"+addr+path, rd)
	if err != nil {
		return 0, err
	}
	if c.ClusterKey != "" {
		req.Header.Set(ClusterKeyHeader, c.ClusterKey)
	}
	if forwarded {
		req.Header.Set(forwardedHeader, "1")
	}
	resp, err := c.HTTP.Do(req)
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

// Forward sends a proposal to the leader at leaderHTTP and returns its index and results.
// binary picks the encoding of the body (see Node.BinaryBatches); the leader reads both.
func (c *Client) Forward(ctx context.Context, leaderHTTP string, cmds []fsm.Command, binary bool) (uint64, []error, error) {
	body, err := encodeBatch(cmds, binary)
	if err != nil {
		return 0, nil, err
	}
	var reply proposeReply
	status, err := c.do(ctx, http.MethodPost, leaderHTTP, PathPropose, body, &reply)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %v", ErrForward, err)
	}
	if status != http.StatusOK {
		return 0, nil, fmt.Errorf("%w: leader %s answered %d: %s", ErrForward, leaderHTTP, status, reply.Error)
	}
	return reply.Index, decodeResults(reply.Results), nil
}

// checkKey guards internal endpoints with a constant-time compare of the cluster key.
func checkKey(key string, w http.ResponseWriter, r *http.Request) bool {
	if key == "" {
		return true
	}
	if subtle.ConstantTimeCompare([]byte(r.Header.Get(ClusterKeyHeader)), []byte(key)) != 1 {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong cluster key"})
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// internalAllowed checks the cluster key and the fault switch of an internal call.
func (n *Node) internalAllowed(clusterKey string, w http.ResponseWriter, r *http.Request) bool {
	if n.Partitioned() {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "partitioned by fault switch"})
		return false
	}
	return checkKey(clusterKey, w, r)
}

// ProposeHandler serves forwarded proposals on the leader.
func (n *Node) ProposeHandler(clusterKey string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !n.internalAllowed(clusterKey, w, r) {
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, proposeReply{Error: "read body: " + err.Error()})
			return
		}
		cmd, err := fsm.Decode(body)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, proposeReply{Error: err.Error()})
			return
		}
		cmds := []fsm.Command{cmd}
		if b, ok := cmd.(fsm.Batch); ok {
			cmds = b.Commands
		}
		index, errs, err := n.Propose(r.Context(), cmds...)
		if err != nil {
			status := http.StatusServiceUnavailable
			if errors.Is(err, ErrNotLeader) || errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
				status = http.StatusMisdirectedRequest
			}
			writeJSON(w, status, proposeReply{Error: err.Error(), Retry: true})
			return
		}
		writeJSON(w, http.StatusOK, proposeReply{Index: index, Results: encodeResults(errs)})
	}
}

// Forwarder coalesces a follower's concurrent writes into one call to the leader, as group
// commit does on the leader itself.
type Forwarder struct {
	b *batcher
}

// forwardSlotWait is how long the next forwarded batch waits for the one in flight before it
// goes anyway: well above a forward's usual time (the slowest whole registration, forward
// included, at c=256: 63 ms in bench run 20261125T234308Z, 156 ms in 20261126T012337Z).
const forwardSlotWait = 250 * time.Millisecond

// NewForwarder forwards through c to whatever leader() answers at the time of each call,
// in the binary form when binary() says every server reads it.
func NewForwarder(c *Client, leader func() (string, error), binary func() bool, max int, wait time.Duration) *Forwarder {
	b := newBatcher(max, wait, func(cmds []fsm.Command) func() (uint64, []error, error) {
		addr, err := leader()
		if err != nil {
			return func() (uint64, []error, error) { return 0, nil, err }
		}
		return func() (uint64, []error, error) {
			// The client's own timeout bounds the call; the callers' retries carry the same
			// request ids, so a batch that committed without an answer is not applied twice.
			return c.Forward(context.Background(), addr, cmds, binary())
		}
	}, batcherHooks{slotWait: forwardSlotWait})
	return &Forwarder{b: b}
}

// Forward commits cmds through the leader as one unit and returns the entry's index and
// one result per command.
func (f *Forwarder) Forward(ctx context.Context, cmds ...fsm.Command) (uint64, []error, error) {
	return f.b.propose(ctx, cmds)
}

// Close stops the forwarder; queued writes fail with ErrClosed.
func (f *Forwarder) Close() { f.b.close() }
