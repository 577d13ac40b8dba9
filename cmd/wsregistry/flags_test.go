package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestFlags_EnvTwinAppliesAndFlagWins(t *testing.T) {
	t.Setenv("WSREGISTRY_NODE_ID", "from-env")
	t.Setenv("WSREGISTRY_NODE_GRACE", "3s")
	c, err := parseServe([]string{"--node-grace", "7s"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.nodeID != "from-env" {
		t.Errorf("node id %q, want the environment's", c.nodeID)
	}
	if c.nodeGrace != 7*time.Second {
		t.Errorf("node grace %v, want the flag's 7s over the environment's 3s", c.nodeGrace)
	}
}

func TestFlags_IocorePortEnvSetsAgentPortUnlessGiven(t *testing.T) {
	t.Setenv(iocorePortEnv, "9427")
	c, err := parseServe(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.wsAddr != ":9427" {
		t.Errorf("ws addr %q, want :9427", c.wsAddr)
	}
	c, err = parseServe([]string{"--ws-addr", "127.0.0.1:1234"}, &bytes.Buffer{})
	if err != nil || c.wsAddr != "127.0.0.1:1234" {
		t.Errorf("flag did not win over %s: %q %v", iocorePortEnv, c.wsAddr, err)
	}
	t.Setenv(iocorePortEnv, "http")
	if _, err := parseServe(nil, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), iocorePortEnv) {
		t.Errorf("bad %s accepted: %v", iocorePortEnv, err)
	}
}

func TestFlags_BadValuesNameTheFlag(t *testing.T) {
	for _, args := range [][]string{
		{"--log-format", "xml"},
		{"--log-level", "loud"},
		{"--bootstrap-expect", "0"},
		{"--ws-addr", "nope"},
	} {
		_, err := parseServe(args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: got %v, want an error naming %s", args, err, args[0])
		}
	}
	t.Setenv("WSREGISTRY_PING_MISSES", "many")
	if _, err := parseServe(nil, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "WSREGISTRY_PING_MISSES") {
		t.Errorf("bad env value: %v", err)
	}
}

func TestHelp_ListsEveryFlagWithDefaultAndEnv(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"serve", "--help"}, &out, &out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"--node-id", "WSREGISTRY_NODE_ID", "--data-dir", "default ./data", "--ws-addr", "default :8427", "--http-addr", "default :8428", "--raft-addr", "default :8429", "--node-grace", "--read-limit"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}
