package fsm

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"strings"
	"unicode/utf8"
)

// TypeBinaryBatch is a Batch in a compact binary form. Every node decodes every entry, and the
// leader also each batch a follower forwards, so decoding is paid many times per registration
// and must be cheap: the binary form is read field by field, without reflection.
//
// Layout after the type byte: uvarint count, then count items, each
//
//	type byte | uvarint length | body of that length
//
// The length lets a node skip an item whose type it does not know (IgnoreIfUnknown) whatever
// its body holds. Bodies of the known types are their fields in declaration order: strings as
// uvarint length + bytes, uint64 as uvarint, int64 as zigzag varint; a SessionID is node, inc,
// seq; a NodeMeta is id, ws, http, raft, inc, features, version, draining (0/1). Bytes after the last field are ignored: a later
// build may append fields, as it may add keys to a JSON body.
//
// Old entries (TypeBatch with JSON bodies, single JSON commands) still decode.
const TypeBinaryBatch CommandType = 8

// appendBinaryBatch appends b in TypeBinaryBatch form to out.
func appendBinaryBatch(out []byte, b Batch) ([]byte, error) {
	out = append(out, byte(TypeBinaryBatch))
	out = binary.AppendUvarint(out, uint64(len(b.Commands)))
	var body []byte
	for i, c := range b.Commands {
		var err error
		body, err = appendBinaryBody(body[:0], c)
		if err != nil {
			return nil, fmt.Errorf("batch command %d: %w", i, err)
		}
		out = append(out, byte(c.Type()))
		out = binary.AppendUvarint(out, uint64(len(body)))
		out = append(out, body...)
	}
	return out, nil
}

// appendBinaryBody appends the binary body of a command in a batch to out.
func appendBinaryBody(out []byte, cmd Command) ([]byte, error) {
	switch c := cmd.(type) {
	case nil:
		return nil, fmt.Errorf("%w: nil command", ErrMalformed)
	case Batch, *Batch:
		return nil, fmt.Errorf("%w: nested batch", ErrMalformed)
	case *Unknown:
		if c == nil {
			return nil, fmt.Errorf("%w: nil %T", ErrMalformed, c)
		}
		return appendUnknown(out, *c)
	case Unknown:
		return appendUnknown(out, c)
	}
	if isNilPointer(cmd) {
		return nil, fmt.Errorf("%w: nil %T", ErrMalformed, cmd)
	}
	k := kindOf(cmd)
	if k == nil {
		return nil, fmt.Errorf("%w: %d (%T)", ErrUnknownType, cmd.Type(), cmd)
	}
	return k.appendBinary(out, cmd)
}

func appendUnknown(out []byte, u Unknown) ([]byte, error) {
	if u.T&IgnoreIfUnknown == 0 || known(u.T) {
		return nil, fmt.Errorf("%w: Unknown with type %#x must carry IgnoreIfUnknown", ErrMalformed, uint8(u.T))
	}
	return append(out, u.Body...), nil
}

// isNilPointer reports whether cmd is a nil pointer to a command (Encode accepts pointers,
// as json.Marshal does), on which Type would panic.
func isNilPointer(cmd Command) bool {
	v := reflect.ValueOf(cmd)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

func appendString(out []byte, s string) []byte {
	out = binary.AppendUvarint(out, uint64(len(s)))
	return append(out, s...)
}

func appendSession(out []byte, s SessionID) []byte {
	out = appendString(out, s.Node)
	out = binary.AppendUvarint(out, s.Incarnation)
	return binary.AppendUvarint(out, s.Seq)
}

// decodeBinaryBatch parses the part of a TypeBinaryBatch entry after its type byte.
func decodeBinaryBatch(b []byte) (Command, error) {
	r := binReader{b: b}
	n := r.uvarint()
	// Every item takes at least two bytes: refuse a count the entry cannot hold before
	// allocating for it.
	if r.err != nil || n > uint64(len(r.b))/2 {
		return nil, fmt.Errorf("%w: binary batch: bad command count", ErrMalformed)
	}
	cmds := make([]Command, n)
	for i := range cmds {
		t := CommandType(r.byte())
		body := r.bytes()
		if r.err != nil {
			return nil, fmt.Errorf("%w: binary batch command %d: truncated", ErrMalformed, i)
		}
		c, err := decodeBinaryBody(t, body)
		if err != nil {
			return nil, fmt.Errorf("binary batch command %d: %w", i, err)
		}
		cmds[i] = c
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("%w: binary batch: %d bytes after the last command", ErrMalformed, len(r.b))
	}
	return Batch{Commands: cmds}, nil
}

func decodeBinaryBody(t CommandType, body []byte) (Command, error) {
	if t == TypeBatch || t == TypeBinaryBatch {
		return nil, fmt.Errorf("%w: nested batch", ErrMalformed)
	}
	k := kinds[t]
	if k == nil {
		if t&IgnoreIfUnknown == 0 {
			return nil, fmt.Errorf("%w: %d", ErrUnknownType, uint8(t))
		}
		return Unknown{T: t, Body: append([]byte(nil), body...)}, nil
	}
	cmd, err := k.decodeBinary(body)
	if err != nil {
		return nil, fmt.Errorf("%w: type %d: truncated body", ErrMalformed, uint8(t))
	}
	return cmd, nil
}

// binReader reads the binary form; after the first error every read returns a zero value
// and err stays set, so a decoder checks once at the end.
type binReader struct {
	b   []byte
	err error
}

var errTruncated = fmt.Errorf("%w: truncated", ErrMalformed)

func (r *binReader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.err = errTruncated
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *binReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errTruncated
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *binReader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errTruncated
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *binReader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.err = errTruncated
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

// string reads a string, coerced to valid UTF-8 the way encoding/json does (each invalid
// byte becomes U+FFFD). A JSON entry or snapshot could never hold anything else, so a node
// restored from a snapshot holds exactly what nodes that replayed the log hold.
func (r *binReader) string() string {
	return utf8String(r.bytes())
}

// strings3 reads three consecutive strings into one allocation, for fields that live and
// die together (a registration's namespace, address and node): a third of the allocations
// and of their headers, on every node for every registration.
func (r *binReader) strings3() (a, b, c string) {
	x, y, z := r.bytes(), r.bytes(), r.bytes()
	if r.err != nil {
		return "", "", ""
	}
	if !utf8.Valid(x) || !utf8.Valid(y) || !utf8.Valid(z) {
		return utf8String(x), utf8String(y), utf8String(z)
	}
	var sb strings.Builder // its String() is the bytes it grew: no second copy
	sb.Grow(len(x) + len(y) + len(z))
	sb.Write(x)
	sb.Write(y)
	sb.Write(z)
	all := sb.String()
	return all[:len(x)], all[len(x) : len(x)+len(y)], all[len(x)+len(y):]
}

// utf8String copies b into a string, each invalid byte replaced by U+FFFD as encoding/json
// does.
func utf8String(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	out := make([]byte, 0, len(b)+8)
	for len(b) > 0 {
		c, size := utf8.DecodeRune(b)
		if c == utf8.RuneError && size == 1 {
			out = append(out, "\uFFFD"...)
		} else {
			out = append(out, b[:size]...)
		}
		b = b[size:]
	}
	return string(out)
}

func (r *binReader) session() SessionID {
	return SessionID{Node: r.string(), Incarnation: r.uvarint(), Seq: r.uvarint()}
}
