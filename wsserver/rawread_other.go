//go:build !unix

package wsserver

// serveRaw is the unix one's stand-in; it is never called, as raw is only set on unix.
func (fr *frameReader) serveRaw(p []byte) (int, error) { return fr.read(p) }
