package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/wsregistry/wsregistry/internal/version"
)

func TestCLI_VersionAndDashDashVersionPrintTheBuild(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != 0 || !strings.Contains(out.String(), "wsregistry "+version.String()) {
			t.Errorf("%v: exit %d, %q %q", args, code, out.String(), errOut.String())
		}
	}
	var out, errOut bytes.Buffer
	var v map[string]string
	if code := run([]string{"version", "--json"}, &out, &errOut); code != 0 || json.Unmarshal(out.Bytes(), &v) != nil || v["version"] != version.String() {
		t.Errorf("version --json: exit %d, %q", code, out.String())
	}
}

func TestFlags_RebalanceValuesAreChecked(t *testing.T) {
	for _, args := range [][]string{{"--rebalance-tolerance", "-1"}, {"--rebalance-rate", "-3"}, {"--rebalance-settle", "-1s"}} {
		var out, errOut bytes.Buffer
		if code := run(append([]string{"serve"}, args...), &out, &errOut); code == 0 || !strings.Contains(errOut.String(), args[0]) {
			t.Errorf("%v: exit %d, stderr %q", args, code, errOut.String())
		}
	}
}
