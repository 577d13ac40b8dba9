// Command wsregistry runs a registry node (the default, `serve`) and talks to running nodes.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const topUsage = `wsregistry: a clustered registry for iocore micro-ws agents.

Usage:
  wsregistry [serve] [flags]     run a node (default; no flags: one-node cluster, data in ./data)
  wsregistry <command> --help    help for a command

Commands:
  serve          run a registry node
  where NS       one live instance of a namespace
  list           every namespace and its instances
  members        cluster members, leader, raft progress
  healthcheck    exit 0 when the node is ready
  join ADDR      add the node whose peer address (--raft-addr) is ADDR to the cluster
  leave          make the node at --addr leave the cluster and stop
  remove ID      remove a member that is gone for good
  fetch NS/PATH [PROPS]  call an agent through the registry, print its result
  watch          stream changes of registrations and membership
  snapshot save|restore FILE   back up or restore the replicated state
  drain          move the agents of the node at --addr to the other nodes (before it stops)
  agent-demo     a demo agent on the Go SDK (registers, serves ws:/echo)
  version        this build's version (also --version)

Client commands talk to --addr (env WSREGISTRY_ADDR, default 127.0.0.1:8428).
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version") {
		return runVersion(args[1:], stdout, stderr)
	}
	if len(args) == 0 || (len(args[0]) > 0 && args[0][0] == '-' && args[0] != "-h" && args[0] != "--help" && args[0] != "help") {
		return runServe(args, stdout, stderr)
	}
	switch args[0] {
	case "serve":
		return runServe(args[1:], stdout, stderr)
	case "where":
		return runWhere(args[1:], stdout, stderr)
	case "list":
		return runList(args[1:], stdout, stderr)
	case "members":
		return runMembers(args[1:], stdout, stderr)
	case "healthcheck":
		return runHealthcheck(args[1:], stdout, stderr)
	case "join":
		return runJoin(args[1:], stdout, stderr)
	case "leave":
		return runLeave(args[1:], stdout, stderr)
	case "remove":
		return runRemove(args[1:], stdout, stderr)
	case "fetch":
		return runFetch(args[1:], stdout, stderr)
	case "watch":
		return runWatch(args[1:], stdout, stderr)
	case "snapshot":
		return runSnapshot(args[1:], stdout, stderr)
	case "drain":
		return runDrain(args[1:], stdout, stderr)
	case "version":
		return runVersion(args[1:], stdout, stderr)
	case "agent-demo":
		return runAgentDemo(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, topUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "wsregistry: unknown command %q\n\n%s", args[0], topUsage)
		return 2
	}
}
