package wsserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/wsregistry/wsregistry/wsserver"
)

// A tiny registry stand-in (online and where, in memory) and an agent that
// registers, finds itself and calls itself through Fetch.
func Example() {
	var mu sync.Mutex
	where := map[string]string{} // namespace -> agent address

	reg := wsserver.NewMux()
	reg.Handle("ws", "online", func(ctx context.Context, ch *wsserver.Channel, props json.RawMessage) (json.RawMessage, error) {
		var args []string
		if err := json.Unmarshal(props, &args); err != nil || len(args) != 1 {
			return nil, wsserver.NewError(400, "online wants one namespace")
		}
		mu.Lock()
		where[args[0]] = ch.Key() // the channel's key is the agent's address
		mu.Unlock()
		return nil, nil // "undefined": {"status":200}
	})
	reg.Handle("ws", "where", func(ctx context.Context, ch *wsserver.Channel, props json.RawMessage) (json.RawMessage, error) {
		var args []string
		if err := json.Unmarshal(props, &args); err != nil || len(args) != 1 {
			return nil, wsserver.NewError(400, "where wants one namespace")
		}
		mu.Lock()
		addr, ok := where[args[0]]
		mu.Unlock()
		if !ok {
			return nil, nil
		}
		return json.Marshal(addr)
	})
	quiet := slog.New(slog.DiscardHandler)
	srv := wsserver.NewServer(wsserver.ServerConfig{ChannelConfig: wsserver.ChannelConfig{Mux: reg, Logger: quiet}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	defer hs.Close()
	defer srv.Shutdown(context.Background())

	agent, err := wsserver.NewAgent(wsserver.AgentConfig{
		Registry:  ln.Addr().String(),
		Listen:    "127.0.0.1:0",
		Advertise: "127.0.0.1",
		Logger:    quiet,
	})
	if err != nil {
		panic(err)
	}
	defer agent.Close()
	agent.Handle("ws", "/greet", func(ctx context.Context, ch *wsserver.Channel, props json.RawMessage) (json.RawMessage, error) {
		var args []string
		if err := json.Unmarshal(props, &args); err != nil || len(args) != 1 {
			return nil, wsserver.NewError(400, "greet wants one name")
		}
		return json.Marshal("hello, " + args[0])
	})

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := agent.Online(ctx, "greeter"); err != nil {
		panic(err)
	}
	addr, found, err := agent.Where(ctx, "greeter")
	fmt.Println("found:", found, "is me:", addr == agent.Addr(), err)
	_, found, _ = agent.Where(ctx, "nobody")
	fmt.Println("nobody found:", found)

	res, err := agent.Fetch(ctx, "ws", "greeter/greet", []string{"world"}, time.Second)
	fmt.Println(string(res), err)
	_, err = agent.Fetch(ctx, "ws", "greeter/nope", nil, time.Second)
	fmt.Println(err)
	_, err = agent.Fetch(ctx, "ws", "nobody/greet", nil, time.Second)
	fmt.Println(err)
	// Output:
	// found: true is me: true <nil>
	// nobody found: false
	// "hello, world" <nil>
	// 104: Cannot find the url 'ws://nope'
	// 404: Cannot find the namepsace of nobody from registry
}
