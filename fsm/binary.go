package fsm

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// TypeBinaryBatch is a Batch in a compact binary form. Every node decodes every entry, and the
// leader also each batch a follower forwards; with JSON that decoding was the largest single
// cost of a registration (encoding/json, ~15% of the leader's CPU under register load).
//
// Layout after the type byte: uvarint count, then count items, each
//
//	type byte | uvarint length | body of that length
//
// The length lets a node skip an item whose type it does not know (IgnoreIfUnknown) whatever
// its body holds. Bodies of the known types are their fields in declaration order: strings as
// uvarint length + bytes, uint64 as uvarint, int64 as zigzag varint; a SessionID is node, inc,
// seq; a NodeMeta is id, ws, http, raft, inc, features. Bytes after the last field are ignored: a later
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

func appendBinaryBody(out []byte, cmd Command) ([]byte, error) {
	cmd, err := derefCommand(cmd)
	if err != nil {
		return nil, err
	}
	switch c := cmd.(type) {
	case nil:
		return nil, fmt.Errorf("%w: nil command", ErrMalformed)
	case Register:
		out = appendString(out, c.RequestID)
		out = appendString(out, c.Reg.Namespace)
		out = appendString(out, c.Reg.Address)
		out = appendSession(out, c.Reg.Session)
		return binary.AppendVarint(out, c.Reg.Since), nil
	case Deregister:
		out = appendString(out, c.RequestID)
		return appendSession(out, c.Session), nil
	case PurgeNode:
		out = appendString(out, c.RequestID)
		out = appendString(out, c.Node)
		return binary.AppendUvarint(out, c.UpToIncarnation), nil
	case SetNode:
		out = appendString(out, c.RequestID)
		out = appendString(out, c.Meta.ID)
		out = appendString(out, c.Meta.WSAddr)
		out = appendString(out, c.Meta.HTTPAddr)
		out = appendString(out, c.Meta.RaftAddr)
		out = binary.AppendUvarint(out, c.Meta.Incarnation)
		return binary.AppendUvarint(out, c.Meta.Features), nil
	case RemoveNode:
		out = appendString(out, c.RequestID)
		return appendString(out, c.Node), nil
	case Unregister:
		out = appendString(out, c.RequestID)
		out = appendSession(out, c.Session)
		return appendString(out, c.Namespace), nil
	case Unknown:
		if c.T&IgnoreIfUnknown == 0 || known(c.T) {
			return nil, fmt.Errorf("%w: Unknown with type %#x must carry IgnoreIfUnknown", ErrMalformed, uint8(c.T))
		}
		return append(out, c.Body...), nil
	case Batch, *Batch:
		return nil, fmt.Errorf("%w: nested batch", ErrMalformed)
	}
	return nil, fmt.Errorf("%w: %d (%T)", ErrUnknownType, cmd.Type(), cmd)
}

// derefCommand turns a pointer to a command into the command (json.Marshal accepted both).
func derefCommand(cmd Command) (Command, error) {
	var p any
	switch c := cmd.(type) {
	case *Register:
		p, cmd = c, deref(c)
	case *Deregister:
		p, cmd = c, deref(c)
	case *PurgeNode:
		p, cmd = c, deref(c)
	case *SetNode:
		p, cmd = c, deref(c)
	case *RemoveNode:
		p, cmd = c, deref(c)
	case *Unregister:
		p, cmd = c, deref(c)
	case *Unknown:
		p, cmd = c, deref(c)
	default:
		return cmd, nil
	}
	if cmd == nil {
		return nil, fmt.Errorf("%w: nil %T", ErrMalformed, p)
	}
	return cmd, nil
}

func deref[T Command](p *T) Command {
	if p == nil {
		return nil
	}
	return *p
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
	r := binReader{b: body}
	var cmd Command
	switch t {
	case TypeRegister:
		var c Register
		c.RequestID = r.string()
		c.Reg.Namespace = r.string()
		c.Reg.Address = r.string()
		c.Reg.Session = r.session()
		c.Reg.Since = r.varint()
		cmd = c
	case TypeDeregister:
		var c Deregister
		c.RequestID = r.string()
		c.Session = r.session()
		cmd = c
	case TypePurgeNode:
		var c PurgeNode
		c.RequestID = r.string()
		c.Node = r.string()
		c.UpToIncarnation = r.uvarint()
		cmd = c
	case TypeSetNode:
		var c SetNode
		c.RequestID = r.string()
		c.Meta.ID = r.string()
		c.Meta.WSAddr = r.string()
		c.Meta.HTTPAddr = r.string()
		c.Meta.RaftAddr = r.string()
		c.Meta.Incarnation = r.uvarint()
		c.Meta.Features = r.uvarint()
		cmd = c
	case TypeRemoveNode:
		var c RemoveNode
		c.RequestID = r.string()
		c.Node = r.string()
		cmd = c
	case TypeUnregister:
		var c Unregister
		c.RequestID = r.string()
		c.Session = r.session()
		c.Namespace = r.string()
		cmd = c
	case TypeBatch, TypeBinaryBatch:
		return nil, fmt.Errorf("%w: nested batch", ErrMalformed)
	default:
		if t&IgnoreIfUnknown == 0 {
			return nil, fmt.Errorf("%w: %d", ErrUnknownType, uint8(t))
		}
		return Unknown{T: t, Body: append([]byte(nil), body...)}, nil
	}
	if r.err != nil {
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
	b := r.bytes()
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
