package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/internal/localcluster"
)

// The membership check must fail a round whose configuration autopilot did not restore: a
// node missing, too few or too many voters, a member half-way.
func TestMembership_WantsEveryNodeAndTheTargetVoters(t *testing.T) {
	var members atomic.Value // []map[string]string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"node": "node0", "leader": "node0", "members": members.Load()})
	}))
	defer srv.Close()
	c := &cluster{Cluster: localcluster.New(t.TempDir(), "127.0.0.1", 5, srv.Client())}
	for _, nd := range c.Nodes {
		nd.HTTP = strings.TrimPrefix(srv.URL, "http://")
	}
	set := func(roles ...string) {
		var ms []map[string]string
		for i, r := range roles {
			ms = append(ms, map[string]string{"id": c.Nodes[i].ID, "suffrage": r})
		}
		members.Store(ms)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		roles []string
		wrong string
	}{
		{[]string{"Voter", "Voter", "Nonvoter", "Voter", "Nonvoter"}, ""},
		{[]string{"Voter", "Voter", "Nonvoter", "Nonvoter", "Nonvoter"}, "2 voters"},
		{[]string{"Voter", "Voter", "Voter", "Voter", "Nonvoter"}, "4 voters"},
		{[]string{"Voter", "Voter", "Voter", "Nonvoter"}, "node4 is not a member"},
		{[]string{"Voter", "Voter", "Voter", "Staging", "Nonvoter"}, "node3 is Staging"},
	} {
		set(tc.roles...)
		vs, nvs, why := c.membership(ctx, 3)
		if tc.wrong == "" && why != "" || tc.wrong != "" && !strings.Contains(why, tc.wrong) {
			t.Errorf("%v: %q, want %q", tc.roles, why, tc.wrong)
		}
		if tc.wrong == "" && (len(vs) != 3 || len(nvs) != 2) {
			t.Errorf("%v: voters %v, non-voters %v", tc.roles, vs, nvs)
		}
	}
	set("Voter", "Voter", "Nonvoter", "Nonvoter", "Nonvoter")
	if _, _, err := c.waitMembership(ctx, 300*time.Millisecond, 3); err == nil {
		t.Error("waitMembership accepted two voters of a target of three")
	}
}
