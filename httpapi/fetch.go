package httpapi

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

// handleFetch is POST /v1/fetch/{namespace}/{path...}: body is the props array.
func (a *api) handleFetch(w http.ResponseWriter, r *http.Request) {
	protocol := r.URL.Query().Get("protocol")
	if protocol == "" {
		protocol = "ws"
	}
	if protocol != "ws" && protocol != "http" {
		writeError(w, http.StatusBadRequest, "protocol must be ws or http, got "+strconv.Quote(protocol))
		return
	}
	timeout, ok := a.fetchTimeout(r.URL.Query().Get("timeout"))
	if !ok {
		writeError(w, http.StatusBadRequest, "timeout must be a positive number of milliseconds, got "+strconv.Quote(r.URL.Query().Get("timeout")))
		return
	}
	limit := a.cfg.FetchBodyLimit
	body, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "reading the body: "+err.Error())
		return
	}
	if int64(len(body)) > limit {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", limit))
		return
	}
	props, err := parseProps(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	url := r.PathValue("namespace") + "/" + r.PathValue("path")
	// The caller going away cancels ctx, which sends the abort frame to the agent.
	res, err := a.cfg.Fetcher.Fetch(r.Context(), protocol, url, props, timeout)
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

// fetchTimeout reads ?timeout= (milliseconds): the default when absent, never above the cap.
func (a *api) fetchTimeout(t string) (time.Duration, bool) {
	max := a.cfg.FetchTimeoutMax
	if t == "" {
		return min(a.cfg.FetchTimeoutDefault, max), true
	}
	ms, err := strconv.ParseInt(t, 10, 64)
	if err != nil || ms <= 0 {
		return 0, false
	}
	if ms >= int64(max/time.Millisecond) {
		return max, true // also where ms*1e6 would overflow a Duration
	}
	return time.Duration(ms) * time.Millisecond, true
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
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, http.StatusGatewayTimeout, err.Error()
	}
	// No agent could be reached (the node's ErrAgentUnreachable names every address tried).
	return http.StatusBadGateway, http.StatusBadGateway, err.Error()
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
