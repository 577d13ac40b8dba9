package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/wsserver"
)

func TestParseProps(t *testing.T) {
	for body, ok := range map[string]bool{``: true, ` [1, "a"] `: true, `[]`: true, `{}`: false, `1`: false, `"x"`: false, `[1,`: false, `null`: false} {
		_, err := parseProps([]byte(body))
		if (err == nil) != ok {
			t.Errorf("parseProps(%q): %v", body, err)
		}
	}
}

// call is one Fetch the API made.
type call struct {
	protocol, url string
	props         string
	timeout       time.Duration
}

// recordFetches makes the fake fetcher record its calls and answer with res, err.
func recordFetches(ta *testAPI, res json.RawMessage, err error) *[]call {
	var calls []call
	ta.fetcher.fn = func(_ context.Context, protocol, url string, props any, timeout time.Duration) (json.RawMessage, error) {
		b, _ := json.Marshal(props)
		calls = append(calls, call{protocol, url, string(b), timeout})
		return res, err
	}
	return &calls
}

func TestFetch_PassesTheCallOnAndChecksTheRequest(t *testing.T) {
	ta := newTestAPI(t, func(ta *testAPI) {
		ta.cfg.FetchTimeoutDefault, ta.cfg.FetchTimeoutMax, ta.cfg.FetchBodyLimit = 2*time.Second, time.Minute, 32
	})
	calls := recordFetches(ta, json.RawMessage(`{"via":"agent"}`), nil)
	if r := ta.post("/v1/fetch/svc/users/7?protocol=http&timeout=250", ` [1,"a"] `); r.code != 200 || r.raw != `{"via":"agent"}` || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("fetch: %d %s", r.code, r.raw)
	}
	if r := ta.post("/v1/fetch/svc", ``); r.code != 200 {
		t.Fatalf("fetch of the namespace's root: %d %s", r.code, r.raw)
	}
	want := []call{{"http", "svc/users/7", `[1,"a"]`, 250 * time.Millisecond}, {"ws", "svc/", `[]`, 2 * time.Second}}
	if fmt.Sprint(*calls) != fmt.Sprint(want) {
		t.Fatalf("calls %+v, want %+v", *calls, want)
	}
	for _, c := range []struct {
		path, body string
		code       int
		want       string
	}{
		{"svc/echo?protocol=ftp", `[]`, 400, `protocol must be ws or http, got "ftp"`},
		{"svc/echo?timeout=soon", `[]`, 400, `timeout must be a positive number of milliseconds, got "soon"`},
		{"svc/echo?timeout=0", `[]`, 400, `timeout must be a positive number`},
		{"svc/echo?timeout=-5", `[]`, 400, `timeout must be a positive number`},
		{"svc/echo", `{"not":"an array"}`, 400, `must be a JSON array`},
		{"svc/echo", `[1,`, 400, `must be a JSON array`},
		{"svc/echo", "[\"\xff\"]", 400, `not valid UTF-8`},
		{"svc/echo", `[` + strings.Repeat(`1,`, 20) + `1]`, 413, `body larger than 32 bytes`},
	} {
		isErrorBody(t, ta.post("/v1/fetch/"+c.path, c.body), c.code, c.want)
	}
	if len(*calls) != 2 {
		t.Fatalf("a refused request reached the fetcher: %+v", *calls)
	}
	recordFetches(ta, nil, nil)
	if r := ta.post("/v1/fetch/svc/nothing", `[]`); r.code != 200 || r.raw != "" || r.header.Get("X-Wsregistry-Result") != "undefined" {
		t.Fatalf("undefined result: %d %q %v", r.code, r.raw, r.header)
	}
}

func TestFetch_HugeTimeoutIsCappedNotWrapped(t *testing.T) {
	ta := newTestAPI(t, func(ta *testAPI) { ta.cfg.FetchTimeoutMax = 300 * time.Millisecond })
	var got time.Duration
	ta.fetcher.fn = func(ctx context.Context, _, _ string, _ any, timeout time.Duration) (json.RawMessage, error) {
		got = timeout
		select {
		case <-time.After(timeout):
		case <-ctx.Done():
		}
		return nil, &wsserver.Error{Status: 104, Code: "ECONNABORTED", Message: "timeout"}
	}
	start := time.Now()
	if r := ta.post("/v1/fetch/svc/slow?timeout=9300000000000", `[]`); r.code != 504 {
		t.Fatalf("huge timeout: %d %s", r.code, r.raw)
	}
	if d := time.Since(start); d > 5*time.Second || got != 300*time.Millisecond {
		t.Fatalf("a timeout past the cap took %v (timeout passed on: %v): it wrapped around instead of being capped", d, got)
	}
	// A default above the cap is capped too.
	ta = newTestAPI(t, func(ta *testAPI) { ta.cfg.FetchTimeoutDefault, ta.cfg.FetchTimeoutMax = time.Hour, time.Second })
	calls := recordFetches(ta, nil, nil)
	ta.post("/v1/fetch/svc/x", `[]`)
	if (*calls)[0].timeout != time.Second {
		t.Fatalf("default timeout past the cap passed on as %v", (*calls)[0].timeout)
	}
}

// How a Fetch error becomes the HTTP status and the body's status field.
func TestFetch_ErrorsMapToStatuses(t *testing.T) {
	for _, c := range []struct {
		err        error
		code       int
		bodyStatus string
		msg        string
	}{
		{&wsserver.Error{Status: 404, Message: "Cannot find the namepsace of nobody from registry"}, 404, "404", "Cannot find the namepsace of nobody from registry"},
		{&wsserver.Error{Status: 403, Message: "no entry"}, 403, "403", "no entry"},
		{&wsserver.Error{Status: 500, Message: "boom"}, 500, "500", "boom"},
		{&wsserver.Error{Status: 104, Message: "no handler"}, 502, "104", "no handler"},
		{&wsserver.Error{Status: 700, Message: "odd"}, 502, "700", "odd"},
		{&wsserver.Error{Code: "EWEIRD", Message: "strange status"}, 502, `"EWEIRD"`, "strange status"},
		{&wsserver.Error{Code: "ECONNABORTED", Message: "timeout of 100ms"}, 504, `"ECONNABORTED"`, "agent did not answer in time: timeout of 100ms"},
		{fmt.Errorf("calling: %w", context.DeadlineExceeded), 504, "504", "calling: context deadline exceeded"},
		{errors.New("agent unreachable: namespace svc, tried 127.0.0.1:1: refused"), 502, "502", "tried 127.0.0.1:1"},
	} {
		ta := newTestAPI(t)
		recordFetches(ta, nil, c.err)
		r := ta.post("/v1/fetch/svc/x", `[]`)
		if r.code != c.code || !strings.Contains(r.raw, `"status":`+c.bodyStatus) || !strings.Contains(asString(r.body["message"]), c.msg) {
			t.Errorf("%v: got %d %s, want %d, status %s, message %q", c.err, r.code, r.raw, c.code, c.bodyStatus, c.msg)
		}
	}
}
