//go:build unix

package wsserver

import "syscall"

// readNow reads what the socket already holds into b without waiting: Go keeps its sockets
// non-blocking, and returning true from the callback skips the wait for readiness. Nothing
// there, an error or the end of the stream all read as 0: the next blocking read reports
// them.
func readNow(rc syscall.RawConn, b []byte) int {
	n := 0
	err := rc.Read(func(fd uintptr) bool {
		n, _ = syscall.Read(int(fd), b)
		return true
	})
	if err != nil || n < 0 {
		return 0
	}
	return n
}
