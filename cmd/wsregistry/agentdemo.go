package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wsregistry/wsregistry/wsserver"
)

// runAgentDemo is a tiny agent built on the Go SDK: it registers namespaces, serves
// ("ws", "/echo") and ("ws", "/whoami"), and keeps its registration alive across registry
// failures. The compose test and people trying the cluster use it.
func runAgentDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agent-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	registryAddr := fs.String("registry", "127.0.0.1:8427", "registry addresses, comma-separated (host:port, host:port/t/<token>, ws:// or wss://host:port); the agent fails over between them")
	token := fs.String("token", "", "agent token, sent as Authorization: Bearer")
	tlsCA := fs.String("tls-ca", "", "CA bundle to verify a registry dialed over wss:// (addresses without a scheme then use wss://)")
	namespaces := fs.String("namespace", "demo", "comma-separated namespaces to register")
	listen := fs.String("listen", ":9000", "the agent's own micro-ws listen address")
	advertise := fs.String("advertise", "", "the agent's advertised ip (default: first non-loopback IPv4)")
	fs.Usage = usage(fs, stderr, "Usage: wsregistry agent-demo [flags]\n\nA demo agent on the Go SDK: registers, serves ws:/echo and ws:/whoami, reconnects.")
	if err := parseFlags(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	var tlsCfg *tls.Config
	if *tlsCA != "" {
		pool, err := loadPool(*tlsCA)
		if err != nil {
			fmt.Fprintf(stderr, "wsregistry agent-demo: %v\n", err)
			return 2
		}
		tlsCfg = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	agent, err := wsserver.NewAgent(wsserver.AgentConfig{
		Registries: splitList(*registryAddr), Token: *token, TLS: tlsCfg,
		Listen: *listen, Advertise: *advertise, Logger: log,
		ReconnectMin: 100 * time.Millisecond, ReconnectMax: 2 * time.Second,
	})
	if err != nil {
		fmt.Fprintf(stderr, "wsregistry agent-demo: %v\n", err)
		return 1
	}
	defer agent.Close()
	agent.Handle("ws", "/echo", func(_ context.Context, _ *wsserver.Channel, props json.RawMessage) (json.RawMessage, error) {
		return props, nil
	})
	agent.Handle("ws", "/whoami", func(context.Context, *wsserver.Channel, json.RawMessage) (json.RawMessage, error) {
		return json.Marshal(agent.Addr())
	})
	var nss []string
	for _, ns := range strings.Split(*namespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			nss = append(nss, ns)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	for {
		octx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := agent.Online(octx, nss...)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return 0
		}
		log.Warn("online failed; retrying", "err", err)
		time.Sleep(500 * time.Millisecond)
	}
	fmt.Fprintf(stdout, "agent %s online as %s via %s\n", agent.Addr(), strings.Join(nss, ","), *registryAddr)
	<-ctx.Done()
	return 0
}
