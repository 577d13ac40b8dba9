package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
)

func runSnapshot(args []string, stdout, stderr io.Writer) int {
	return clientCommand("snapshot", "Usage: wsregistry snapshot save|restore [flags] <file>\n\nsave writes the replicated state of --addr to a file; restore replaces the whole cluster's\nstate with one (through the leader; every node then reconciles it with its live agents).", args, stdout, stderr, 2, 2,
		func(c *clientFlags, args []string, stdout io.Writer) error {
			switch args[0] {
			case "save":
				return snapshotSave(c, args[1], stdout)
			case "restore":
				return snapshotRestore(c, args[1], stdout)
			}
			return fmt.Errorf("unknown action %q: want save or restore", args[0])
		})
}

func snapshotSave(c *clientFlags, path string, stdout io.Writer) error {
	resp, err := c.raw(context.Background(), http.MethodGet, "/v1/snapshot", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	tmp := path + ".partial"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "saved %d bytes at index %s to %s\n", n, resp.Header.Get("X-Wsregistry-Snapshot-Index"), path)
	return nil
}

func snapshotRestore(c *clientFlags, path string, stdout io.Writer) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var out map[string]any
	if _, err := c.apiCall(http.MethodPost, "/v1/snapshot", data, &out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "restored %s (%d bytes); applied index now %v\n", path, len(data), out["applied_index"])
	return nil
}

// raw performs a call whose body the caller streams; a non-2xx answer becomes an error.
func (c *clientFlags) raw(ctx context.Context, method, path string, body io.Reader) (*http.Response, error) {
	base := c.addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, body)
	if err != nil {
		return nil, err
	}
	if c.adminToken != "" {
		req.Header.Set("Authorization", "Bearer "+c.adminToken)
	}
	hc, err := c.httpClient()
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("node at %s is not reachable: %w", c.addr, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		msg := strings.TrimSpace(string(b))
		if resp.StatusCode == http.StatusUnauthorized {
			msg += " (check --admin-token / WSREGISTRY_ADMIN_TOKEN)"
		}
		return nil, &apiError{status: resp.StatusCode, msg: msg}
	}
	return resp, nil
}

func runWatch(args []string, stdout, stderr io.Writer) int {
	var from uint64
	return clientCommandWith("watch", "Usage: wsregistry watch [flags]\n\nStreams every change of registrations and membership from --addr until interrupted.", args, stdout, stderr, 0, 0,
		func(fs *flag.FlagSet) {
			fs.Uint64Var(&from, "index", 0, "resume after this raft index (0: start with the full state)")
		},
		func(c *clientFlags, _ []string, stdout io.Writer) error {
			path := "/v1/watch"
			if from > 0 {
				path += "?index=" + strconv.FormatUint(from, 10)
			}
			resp, err := c.raw(context.Background(), http.MethodGet, path, nil)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			return printSSE(resp.Body, stdout, c.asJSON)
		})
}

// printSSE prints each Server-Sent Event: with --json the data line as it came, otherwise
// "<event> <data>".
func printSSE(r io.Reader, w io.Writer, asJSON bool) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	event, id := "message", ""
	var data []string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if len(data) > 0 {
				d := strings.Join(data, "\n")
				if asJSON {
					fmt.Fprintln(w, d)
				} else if id != "" {
					fmt.Fprintf(w, "%s %s %s\n", id, event, d)
				} else {
					fmt.Fprintf(w, "%s %s\n", event, d)
				}
			}
			event, id, data = "message", "", nil
		case strings.HasPrefix(line, ":"): // heartbeat comment
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "id:"):
			id = strings.TrimSpace(strings.TrimPrefix(line, "id:"))
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("watch stream: %w", err)
	}
	return fmt.Errorf("watch stream ended (node stopped?)")
}
