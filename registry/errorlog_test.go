package registry

import (
	"crypto/tls"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/wsregistry/wsregistry/internal/testcerts"
	"github.com/wsregistry/wsregistry/internal/testutil"
)

// net/http's own errors (here a plain-text client on the TLS API port) are slog lines with
// the node's attributes, not the standard logger's bare lines on stderr.
func TestErrorLog_TLSHandshakeErrorsGoThroughSlog(t *testing.T) {
	files, err := testcerts.Write(t.TempDir(), net.ParseIP("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	var logs testutil.LogBuffer
	n := startNode(t, t.TempDir(), func(c *Config) {
		c.HTTPListener = tls.NewListener(c.HTTPListener, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	conn, err := net.Dial("tcp", n.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	conn.SetReadDeadline(time.Now().Add(scaled(5 * time.Second)))
	conn.Read(make([]byte, 512)) // the server answers a plain client with a 400 and closes
	conn.Close()

	var line string
	eventually(t, 10*time.Second, func() bool {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, "TLS handshake error") {
				line = l
				return true
			}
		}
		return false
	}, "no TLS handshake error logged:\n%s", logs.String())
	for _, want := range []string{`"level":"WARN"`, `"node":"n1"`, `"listener":"http"`, `"msg":"http: TLS handshake error from 127.0.0.1:`} {
		if !strings.Contains(line, want) {
			t.Errorf("want %s in %s", want, line)
		}
	}
}
