package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

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
