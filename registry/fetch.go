package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/wsregistry/wsregistry/wsserver"
)

// Fetch failures that are not the agent's own answer.
var (
	// ErrAgentUnreachable: no instance could be dialed, or the channel closed mid-call.
	ErrAgentUnreachable = errors.New("agent unreachable")
)

// maxFetchAttempts bounds how many instances one Fetch tries when dials fail.
const maxFetchAttempts = 3

// Fetch calls an agent by namespace on behalf of a caller, as the original registry's
// createFetcher: url is "<namespace>/<path>", the agent's handler is (protocol, "/<path>").
// Errors are *wsserver.Error for the agent's own failure (status and message unchanged),
// a 404 *wsserver.Error for an unknown namespace, an ECONNABORTED *wsserver.Error on
// timeout, and ErrAgentUnreachable (wrapped, naming every address tried) otherwise.
func (n *Node) Fetch(ctx context.Context, protocol, url string, props any, timeout time.Duration) (json.RawMessage, error) {
	start := time.Now()
	res, err := n.fetch(ctx, protocol, url, props, timeout)
	n.metrics.fetchSeconds.WithLabelValues(fetchResult(err)).Observe(time.Since(start).Seconds())
	return res, err
}

func (n *Node) fetch(ctx context.Context, protocol, url string, props any, timeout time.Duration) (json.RawMessage, error) {
	ns, path := url, "/"
	if i := strings.IndexByte(url, '/'); i >= 0 {
		ns, path = url[:i], url[i:]
	}
	if err := ValidateNamespace(ns); err != nil {
		return nil, wsserver.NewError(400, "fetch: %v", err)
	}
	if props == nil {
		props = json.RawMessage("[]")
	}
	start := n.roundRobin.Add(1) - 1
	count := len(n.state.Instances(ns))
	if count == 0 {
		return nil, &wsserver.Error{Status: 404, Message: "Cannot find the namepsace of " + ns + " from registry"}
	}
	var tried []string
	var lastErr error
	for i := 0; i < min(count, maxFetchAttempts); i++ {
		reg, ok := n.state.Pick(ns, start+uint64(i))
		if !ok {
			break
		}
		ch, err := n.peers.Get(ctx, reg.Address)
		if err != nil {
			tried = append(tried, reg.Address)
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		res, err := ch.Call(ctx, protocol, path, props, timeout)
		if errors.Is(err, wsserver.ErrClosed) {
			return nil, fmt.Errorf("%w: %s closed the connection during the call: %v", ErrAgentUnreachable, reg.Address, err)
		}
		return res, err
	}
	return nil, fmt.Errorf("%w: namespace %s, tried %s: %v", ErrAgentUnreachable, ns, strings.Join(tried, ", "), lastErr)
}

// fetchStatus maps a Fetch error to the HTTP status and the body's status field.
func fetchStatus(err error) (int, any, string) {
	var we *wsserver.Error
	switch {
	case errors.As(err, &we) && we.Code == "ECONNABORTED":
		return http.StatusGatewayTimeout, we.Code, "agent did not answer in time: " + we.Message
	case errors.As(err, &we) && we.Code != "":
		return http.StatusBadGateway, we.Code, we.Message
	case errors.As(err, &we) && we.Status >= 400 && we.Status <= 599:
		return we.Status, we.Status, we.Message
	case errors.As(err, &we):
		return http.StatusBadGateway, we.Status, we.Message
	case errors.Is(err, ErrAgentUnreachable):
		return http.StatusBadGateway, http.StatusBadGateway, err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, http.StatusGatewayTimeout, err.Error()
	}
	return http.StatusBadGateway, http.StatusBadGateway, err.Error()
}

// handleFetch is POST /v1/fetch/{namespace}/{path...}: body is the props array.
func (n *Node) handleFetch(w http.ResponseWriter, r *http.Request) {
	protocol := r.URL.Query().Get("protocol")
	if protocol == "" {
		protocol = "ws"
	}
	if protocol != "ws" && protocol != "http" {
		writeError(w, http.StatusBadRequest, "protocol must be ws or http, got "+strconv.Quote(protocol))
		return
	}
	timeout := n.cfg.FetchTimeoutDefault
	if t := r.URL.Query().Get("timeout"); t != "" {
		ms, err := strconv.ParseInt(t, 10, 64)
		if err != nil || ms <= 0 {
			writeError(w, http.StatusBadRequest, "timeout must be a positive number of milliseconds, got "+strconv.Quote(t))
			return
		}
		timeout = n.cfg.FetchTimeoutMax // also where ms*1e6 would overflow a Duration
		if ms < int64(n.cfg.FetchTimeoutMax/time.Millisecond) {
			timeout = time.Duration(ms) * time.Millisecond
		}
	}
	timeout = min(timeout, n.cfg.FetchTimeoutMax)
	body, err := io.ReadAll(io.LimitReader(r.Body, n.cfg.ReadLimit+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return
	}
	if int64(len(body)) > n.cfg.ReadLimit {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", n.cfg.ReadLimit))
		return
	}
	props, err := parseProps(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	url := r.PathValue("namespace") + "/" + r.PathValue("path")
	// The caller going away cancels ctx, which sends the abort frame to the agent.
	res, err := n.Fetch(r.Context(), protocol, url, props, timeout)
	if err != nil {
		status, bodyStatus, msg := fetchStatus(err)
		writeJSON(w, status, map[string]any{"status": bodyStatus, "message": msg})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if res == nil {
		w.Header().Set("X-Wsregistry-Result", "undefined") // the agent returned nothing at all
		w.WriteHeader(http.StatusOK)
		return
	}
	w.WriteHeader(http.StatusOK)
	w.Write(res)
}

// parseProps accepts exactly a JSON array; an empty body means no props.
func parseProps(body []byte) (json.RawMessage, error) {
	trimmed := strings.TrimSpace(string(body))
	if trimmed == "" {
		return json.RawMessage("[]"), nil
	}
	// The props go to the agent in a text frame, which must be UTF-8.
	if !utf8.ValidString(trimmed) {
		return nil, errors.New("the body is not valid UTF-8")
	}
	var arr []json.RawMessage
	if trimmed[0] != '[' || json.Unmarshal([]byte(trimmed), &arr) != nil {
		return nil, errors.New("the body must be a JSON array of props, e.g. [1,\"a\"]")
	}
	return json.RawMessage(trimmed), nil
}
