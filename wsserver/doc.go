// Package wsserver implements the iocore micro-ws wire protocol (see
// docs/protocol.md): frames, channels that both serve requests and call the
// peer (ids, timeouts, aborts), accepting (Server) and dialing (Dial)
// WebSocket connections, the (protocol, cmd) handler table (Mux), a listener
// that serves ws:// and wss:// on one port (NewSniffListener), and a Go agent
// SDK (Agent) that fails over between registry nodes, over ws:// or wss://.
//
// It depends only on the standard library and github.com/coder/websocket;
// whatever stores registrations plugs in through ServerConfig.OnOpen/OnClose
// and the Mux.
package wsserver
