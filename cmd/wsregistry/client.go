package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// clientFlags are shared by every command that talks to a running node.
type clientFlags struct {
	addr       string
	adminToken string
	asJSON     bool
	timeout    time.Duration
	tlsCA      string
	// tokenFrom names the file adminToken was read from (dotEnvFile), empty when it came
	// from the flag or the environment; errors mention it, so a stale file is easy to spot.
	tokenFrom string
}

// httpClient trusts --tls-ca for https:// addresses.
func (c *clientFlags) httpClient() (*http.Client, error) {
	if c.tlsCA == "" {
		return http.DefaultClient, nil
	}
	pool, err := loadPool(c.tlsCA)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}, nil
}

func newClientFlagSet(name, synopsis string, c *clientFlags, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.addr, "addr", "127.0.0.1:8428", "HTTP address of any node")
	fs.StringVar(&c.adminToken, "admin-token", "", "admin token for join, leave, remove, snapshot and fetch (neither flag nor env given: WSREGISTRY_ADMIN_TOKEN from ./.env, as scripts/compose-env.sh writes it)")
	fs.BoolVar(&c.asJSON, "json", false, "print JSON instead of a table")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "how long to wait for the node")
	fs.StringVar(&c.tlsCA, "tls-ca", "", "CA bundle to verify a node served over HTTPS (--addr https://host:8428)")
	fs.Usage = usage(fs, stderr, synopsis)
	return fs
}

// apiCall performs one HTTP call against a node and decodes its JSON answer; a non-2xx
// answer becomes an error carrying the node's message.
func (c *clientFlags) apiCall(method, path string, body []byte, out any) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	base := c.addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	if c.adminToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.adminToken)
	}
	hc, err := c.httpClient()
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("node at %s is not reachable: %w", c.addr, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Status  any    `json:"status"`
			Message string `json:"message"`
			Reason  string `json:"reason"`
		}
		json.Unmarshal(data, &e)
		msg := e.Message
		if msg == "" {
			msg = e.Reason
		}
		if msg == "" {
			msg = strings.TrimSpace(string(data))
		}
		if resp.StatusCode == http.StatusUnauthorized {
			msg += " (check --admin-token / WSREGISTRY_ADMIN_TOKEN)"
		}
		return resp.StatusCode, &apiError{status: resp.StatusCode, bodyStatus: e.Status, msg: msg}
	}
	if out != nil {
		if raw, ok := out.(*json.RawMessage); ok {
			*raw = append((*raw)[:0], data...)
			return resp.StatusCode, nil
		}
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("node answered something that is not JSON: %.200s", data)
		}
	}
	return resp.StatusCode, nil
}

type apiError struct {
	status     int
	bodyStatus any // the iocore status in the body, when it differs (e.g. "ECONNABORTED")
	msg        string
}

func (e *apiError) Error() string {
	if e.bodyStatus != nil && fmt.Sprint(e.bodyStatus) != strconv.Itoa(e.status) {
		return fmt.Sprintf("HTTP %d, status %v: %s", e.status, e.bodyStatus, e.msg)
	}
	return fmt.Sprintf("status %d: %s", e.status, e.msg)
}

func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// clientCommand runs a command against a node, mapping errors to an exit status.
func clientCommand(name, synopsis string, args []string, stdout, stderr io.Writer, minArgs, maxArgs int,
	fn func(c *clientFlags, args []string, stdout io.Writer) error) int {
	return clientCommandWith(name, synopsis, args, stdout, stderr, minArgs, maxArgs, nil, fn)
}

// clientCommandWith also lets a command add its own flags.
func clientCommandWith(name, synopsis string, args []string, stdout, stderr io.Writer, minArgs, maxArgs int,
	extra func(fs *flag.FlagSet), fn func(c *clientFlags, args []string, stdout io.Writer) error) int {
	var c clientFlags
	fs := newClientFlagSet(name, synopsis, &c, stderr)
	if extra != nil {
		extra(fs)
	}
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(positional) < minArgs || len(positional) > maxArgs {
		fmt.Fprintf(stderr, "wsregistry %s: wrong number of arguments\n", name)
		fs.Usage()
		return 2
	}
	if err := c.tokenFromDotEnv(fs, dotEnvFile); err != nil {
		// A broken .env must not stop read commands: say so and go on without a token.
		fmt.Fprintf(stderr, "wsregistry %s: not using %s: %v\n", name, dotEnvFile, err)
	}
	if err := fn(&c, positional, stdout); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.status == http.StatusUnauthorized {
			switch {
			case c.tokenFrom != "":
				err = fmt.Errorf("%w (the admin token was read from %s; is it this cluster's?)", err, c.tokenFrom)
			case c.adminToken == "":
				err = fmt.Errorf("%w (no token was sent; beside docker-compose.yml it is read from %s)", err, dotEnvFile)
			}
		}
		fmt.Fprintf(stderr, "wsregistry %s: %v\n", name, err)
		return 1
	}
	return 0
}

// dotEnvFile is the file, in the working directory, where client commands look for
// WSREGISTRY_ADMIN_TOKEN when neither --admin-token nor the variable is given: the .env that
// scripts/compose-env.sh writes next to docker-compose.yml, so that admin commands run there
// reach the compose cluster (whose published ports are not a trusted network) without the
// secret being pasted onto a command line.
const dotEnvFile = ".env"

// tokenFromDotEnv sets the admin token from path unless --admin-token or its environment
// twin was given; either one, even empty, wins (WSREGISTRY_ADMIN_TOKEN= sends no token). A
// missing file is not an error.
func (c *clientFlags) tokenFromDotEnv(fs *flag.FlagSet, path string) error {
	given := false
	// applyEnv sets the flag from the environment with fs.Set, so Visit sees both sources.
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "admin-token" })
	if given {
		return nil
	}
	tok, found, err := readDotEnv(path, envName("admin-token"))
	if err != nil || !found || tok == "" {
		return err
	}
	c.adminToken, c.tokenFrom = tok, path
	return nil
}

// readDotEnv returns the value of key in an env file as Compose reads it: KEY=value lines,
// an optional "export " before the key, the value optionally in single or double quotes,
// blank lines, lines starting with '#' and, after an unquoted value, " #" comments ignored;
// a later line wins. Other keys are not interpreted. Errors never contain a value.
func readDotEnv(path, key string) (value string, found bool, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || line[0] == '#' {
			continue
		}
		line = strings.TrimSpace(strings.TrimPrefix(line, "export "))
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) != key {
			continue
		}
		v = strings.TrimSpace(v)
		if v != "" && (v[0] == '"' || v[0] == '\'') {
			end := strings.IndexByte(v[1:], v[0])
			if end < 0 {
				return "", false, fmt.Errorf("%s line %d: the value of %s has no closing quote", path, i+1, key)
			}
			v = v[1 : 1+end]
		} else if j := strings.IndexFunc(v, inlineComment()); j >= 0 {
			v = strings.TrimSpace(v[:j])
		}
		value, found = v, true
	}
	return value, found, nil
}

// inlineComment matches the '#' that starts a comment after an unquoted value: one that
// follows a blank ("KEY=abc # note"); a '#' inside the value ("KEY=a#b") is kept.
func inlineComment() func(rune) bool {
	prevBlank := false
	return func(r rune) bool {
		hit := r == '#' && prevBlank
		prevBlank = r == ' ' || r == '\t'
		return hit
	}
}

func runWhere(args []string, stdout, stderr io.Writer) int {
	return clientCommand("where", "Usage: wsregistry where [flags] <namespace>\n\nPrints one live instance (host:port) of the namespace.", args, stdout, stderr, 1, 1,
		func(c *clientFlags, args []string, stdout io.Writer) error {
			var out struct {
				Namespace string `json:"namespace"`
				Host      string `json:"host"`
			}
			if _, err := c.apiCall(http.MethodGet, "/v1/where/"+url.PathEscape(args[0]), nil, &out); err != nil {
				return err
			}
			if c.asJSON {
				printJSON(stdout, out)
			} else {
				fmt.Fprintln(stdout, out.Host)
			}
			return nil
		})
}

type listedNamespace struct {
	Name      string `json:"name"`
	Instances []struct {
		Host    string    `json:"host"`
		Node    string    `json:"node"`
		Session string    `json:"session"`
		Since   time.Time `json:"since"`
	} `json:"instances"`
}

func runList(args []string, stdout, stderr io.Writer) int {
	return clientCommand("list", "Usage: wsregistry list [flags]\n\nLists every namespace with its live instances.", args, stdout, stderr, 0, 0,
		func(c *clientFlags, _ []string, stdout io.Writer) error {
			var out []listedNamespace
			if _, err := c.apiCall(http.MethodGet, "/v1/namespaces", nil, &out); err != nil {
				return err
			}
			if c.asJSON {
				printJSON(stdout, out)
				return nil
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAMESPACE\tHOST\tNODE\tSINCE")
			for _, ns := range out {
				for _, in := range ns.Instances {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ns.Name, in.Host, in.Node, in.Since.Format(time.RFC3339))
				}
			}
			return tw.Flush()
		})
}

func runMembers(args []string, stdout, stderr io.Writer) int {
	return clientCommand("members", "Usage: wsregistry members [flags]\n\nLists the cluster's members, the leader and raft progress.", args, stdout, stderr, 0, 0,
		func(c *clientFlags, _ []string, stdout io.Writer) error {
			var raw json.RawMessage
			if _, err := c.apiCall(http.MethodGet, "/v1/cluster", nil, &raw); err != nil {
				return err
			}
			if c.asJSON {
				var v any
				json.Unmarshal(raw, &v)
				printJSON(stdout, v)
				return nil
			}
			var v struct {
				Node         string `json:"node"`
				Leader       string `json:"leader"`
				Term         uint64 `json:"term"`
				CommitIndex  uint64 `json:"commit_index"`
				AppliedIndex uint64 `json:"applied_index"`
				Members      []struct {
					ID            string `json:"id"`
					Raft          string `json:"raft"`
					WS            string `json:"ws"`
					HTTP          string `json:"http"`
					Suffrage      string `json:"suffrage"`
					Role          string `json:"role"`
					Leader        bool   `json:"leader"`
					LastContactMS *int64 `json:"last_contact_ms"`
					Health        *struct {
						Lag     uint64 `json:"lag"`
						Healthy bool   `json:"healthy"`
					} `json:"health"`
				} `json:"members"`
				Autopilot *struct {
					Recent []struct {
						At     time.Time `json:"at"`
						Action string    `json:"action"`
						Member string    `json:"member"`
						Reason string    `json:"reason"`
						Error  string    `json:"error"`
					} `json:"recent"`
				} `json:"autopilot"`
			}
			if err := json.Unmarshal(raw, &v); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "asked %s: leader %s, term %d, commit %d, applied %d\n", v.Node, v.Leader, v.Term, v.CommitIndex, v.AppliedIndex)
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tROLE\tHEALTH\tWS\tHTTP\tRAFT\tLAST CONTACT")
			for _, m := range v.Members {
				state := "follower"
				if m.Leader {
					state = "leader"
				}
				role := m.Role
				if role == "" { // a node from before roles were shown
					role = strings.ToLower(m.Suffrage)
				}
				// Only the leader probes every member.
				health := "?"
				if h := m.Health; h != nil {
					health = "healthy"
					if !h.Healthy {
						health = "failing"
					}
					if h.Lag > 0 {
						health += fmt.Sprintf(" (lag %d)", h.Lag)
					}
				}
				lc := "?"
				if m.LastContactMS != nil {
					lc = (time.Duration(*m.LastContactMS) * time.Millisecond).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, state, role, health, m.WS, m.HTTP, m.Raft, lc)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if v.Autopilot != nil && len(v.Autopilot.Recent) > 0 {
				fmt.Fprintf(stdout, "\nautopilot, while %s led (newest last):\n", v.Node)
				for _, a := range v.Autopilot.Recent {
					line := fmt.Sprintf("  %s  %-8s %s: %s", a.At.UTC().Format(time.RFC3339), a.Action, a.Member, a.Reason)
					if a.Error != "" {
						line += " (failed: " + a.Error + ")"
					}
					fmt.Fprintln(stdout, line)
				}
			}
			return nil
		})
}

func runHealthcheck(args []string, stdout, stderr io.Writer) int {
	return clientCommand("healthcheck", "Usage: wsregistry healthcheck [flags]\n\nExits 0 when the node is ready (the Docker healthcheck).", args, stdout, stderr, 0, 0,
		func(c *clientFlags, _ []string, stdout io.Writer) error {
			var out map[string]string
			if _, err := c.apiCall(http.MethodGet, "/readyz", nil, &out); err != nil {
				return err
			}
			fmt.Fprintln(stdout, out["status"])
			return nil
		})
}

func runJoin(args []string, stdout, stderr io.Writer) int {
	return clientCommand("join", "Usage: wsregistry join [flags] <peer-addr-of-new-node>\n\nAdds the node whose peer port (its --raft-addr, host:8429; not its HTTP address) is at that\naddress to the cluster of --addr. An admin call: --admin-token, WSREGISTRY_ADMIN_TOKEN or ./.env.", args, stdout, stderr, 1, 1,
		func(c *clientFlags, args []string, stdout io.Writer) error {
			var out map[string]string
			if _, err := c.apiCall(http.MethodPost, "/v1/join?addr="+url.QueryEscape(args[0]), nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s joined\n", out["node"])
			return nil
		})
}

func runLeave(args []string, stdout, stderr io.Writer) int {
	return clientCommand("leave", "Usage: wsregistry leave [flags]\n\nThe node at --addr closes its agents, leaves the cluster (handing over leadership first) and stops.", args, stdout, stderr, 0, 0,
		func(c *clientFlags, _ []string, stdout io.Writer) error {
			var out map[string]string
			if _, err := c.apiCall(http.MethodPost, "/v1/leave", nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s left the cluster\n", out["node"])
			return nil
		})
}

func runRemove(args []string, stdout, stderr io.Writer) int {
	return clientCommand("remove", "Usage: wsregistry remove [flags] <node-id>\n\nRemoves a member that is gone for good.", args, stdout, stderr, 1, 1,
		func(c *clientFlags, args []string, stdout io.Writer) error {
			var out map[string]string
			if _, err := c.apiCall(http.MethodPost, "/v1/remove/"+url.PathEscape(args[0]), nil, &out); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s removed\n", out["node"])
			return nil
		})
}

// parseInterspersed lets flags follow the arguments (wsregistry fetch ns/path '[1]' --timeout 2s),
// then applies the environment twins.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	return positional, applyEnv(fs, os.LookupEnv)
}

func runFetch(args []string, stdout, stderr io.Writer) int {
	var protocol string
	return clientCommandWith("fetch", "Usage: wsregistry fetch [flags] <namespace>/<path> [props-json-array]\n\nCalls an agent through the registry (createFetcher) and prints its result as JSON.\n--timeout is how long the agent may take.\nExample: wsregistry fetch user-service/users '[1,\"a\"]' --timeout 2s", args, stdout, stderr, 1, 2,
		func(fs *flag.FlagSet) {
			fs.StringVar(&protocol, "protocol", "ws", "the agent handler's protocol: ws or http")
		},
		func(c *clientFlags, args []string, stdout io.Writer) error {
			props := "[]"
			if len(args) == 2 {
				props = args[1]
			}
			q := url.Values{"protocol": {protocol}, "timeout": {strconv.FormatInt(c.timeout.Milliseconds(), 10)}}
			c.timeout += 5 * time.Second // the node answers 504 itself when the agent is late
			var raw json.RawMessage
			if _, err := c.apiCall(http.MethodPost, "/v1/fetch/"+args[0]+"?"+q.Encode(), []byte(props), &raw); err != nil {
				return err
			}
			if len(raw) == 0 {
				fmt.Fprintln(stdout, "undefined")
				return nil
			}
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				fmt.Fprintln(stdout, string(raw))
				return nil
			}
			printJSON(stdout, v)
			return nil
		})
}
