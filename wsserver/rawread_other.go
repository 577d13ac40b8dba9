//go:build !linux

package wsserver

import (
	"net"
	"syscall"
)

// rawConnFor is Linux's only: serveRaw needs TCP_INQ to know that a read left nothing
// behind. Elsewhere the frameReader reads with plain reads.
func rawConnFor(net.Conn) syscall.RawConn { return nil }

// serveRaw is never called where rawConnFor gives nothing.
func (fr *frameReader) serveRaw(p []byte) (int, error) { return fr.read(p) }

// writeNoWait is never called where rawConnFor gives nothing.
func writeNoWait(syscall.RawConn, []byte) (int, error) { return 0, nil }
