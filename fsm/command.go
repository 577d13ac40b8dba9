package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// CommandType is the first byte of every log entry.
type CommandType uint8

// IgnoreIfUnknown is a bit of CommandType: a node that does not know a type
// carrying it skips the command instead of stopping, so an optional new
// command can be rolled out before every node is upgraded.
const IgnoreIfUnknown CommandType = 0x80

const (
	TypeRegister   CommandType = 1
	TypeDeregister CommandType = 2
	TypePurgeNode  CommandType = 3
	TypeSetNode    CommandType = 4
	TypeBatch      CommandType = 5
	TypeRemoveNode CommandType = 6
	TypeUnregister CommandType = 7
)

var (
	// ErrUnknownType: a log entry of a type this build does not know and
	// that lacks IgnoreIfUnknown.
	ErrUnknownType = errors.New("unknown command type")
	// ErrMalformed: a log entry that cannot be decoded.
	ErrMalformed = errors.New("malformed command")
)

// Command is one state change. The RequestID on each command, when not
// empty, makes a retried proposal apply only once.
type Command interface{ Type() CommandType }

// Register adds Reg to its namespace.
type Register struct {
	RequestID string       `json:"rid,omitempty"`
	Reg       Registration `json:"reg"`
}

// Deregister removes every registration of Session and remembers the
// session as closed.
type Deregister struct {
	RequestID string    `json:"rid,omitempty"`
	Session   SessionID `json:"session"`
}

// PurgeNode removes every session of Node whose incarnation <=
// UpToIncarnation (0: every incarnation seen so far, the max of its NodeMeta
// incarnation and its sessions' incarnations), and remembers the mark so a
// later Register from a purged incarnation is refused with ErrSessionClosed.
type PurgeNode struct {
	RequestID       string `json:"rid,omitempty"`
	Node            string `json:"node"`
	UpToIncarnation uint64 `json:"upto"`
}

// SetNode upserts node metadata.
type SetNode struct {
	RequestID string   `json:"rid,omitempty"`
	Meta      NodeMeta `json:"meta"`
}

// RemoveNode forgets the node's metadata and purges all its sessions, as
// PurgeNode with UpToIncarnation 0 does (the mark stays).
type RemoveNode struct {
	RequestID string `json:"rid,omitempty"`
	Node      string `json:"node"`
}

// Unregister removes one namespace of a session and leaves the rest of the session alone
// (a replacing connection dropping registrations it inherited but never asked for).
type Unregister struct {
	RequestID string    `json:"rid,omitempty"`
	Session   SessionID `json:"session"`
	Namespace string    `json:"ns"`
}

// Batch is a group commit: many commands in one log entry, applied in order,
// each with its own result. Batches do not nest.
type Batch struct {
	Commands []Command
}

// Unknown is what Decode returns for a type this build does not know but
// that carries IgnoreIfUnknown. Apply skips it with a nil result.
type Unknown struct {
	T    CommandType
	Body json.RawMessage
}

func (Register) Type() CommandType   { return TypeRegister }
func (Deregister) Type() CommandType { return TypeDeregister }
func (PurgeNode) Type() CommandType  { return TypePurgeNode }
func (SetNode) Type() CommandType    { return TypeSetNode }
func (RemoveNode) Type() CommandType { return TypeRemoveNode }
func (Unregister) Type() CommandType { return TypeUnregister }
func (Batch) Type() CommandType      { return TypeBatch }
func (u Unknown) Type() CommandType  { return u.T }

// batchItem is one nested command in a Batch body. The body stays raw JSON
// rather than base64 so entries are readable in a log dump.
type batchItem struct {
	T CommandType     `json:"t"`
	B json.RawMessage `json:"b"`
}

// Encode renders cmd as one type byte followed by its body: a Batch in the binary form of
// TypeBinaryBatch, any other command as JSON. (Batches written before the binary form have
// type TypeBatch and a JSON array of {"t":type,"b":body}; Decode still reads them.)
func Encode(cmd Command) ([]byte, error) {
	if cmd == nil {
		return nil, fmt.Errorf("%w: nil command", ErrMalformed)
	}
	if b, ok, err := asBatch(cmd); ok {
		if err != nil {
			return nil, err
		}
		return appendBinaryBatch(nil, b)
	}
	body, err := encodeBody(cmd)
	if err != nil {
		return nil, err
	}
	return append([]byte{byte(cmd.Type())}, body...), nil
}

// encodeBody marshals a non-batch command without its type byte.
func encodeBody(cmd Command) ([]byte, error) {
	switch c := cmd.(type) {
	case nil:
		return nil, fmt.Errorf("%w: nil command", ErrMalformed)
	case Batch, *Batch:
		return nil, fmt.Errorf("%w: nested batch", ErrMalformed)
	case Unknown:
		return encodeUnknown(c)
	case *Unknown:
		if c == nil {
			return nil, fmt.Errorf("%w: nil command", ErrMalformed)
		}
		return encodeUnknown(*c)
	}
	if !known(cmd.Type()) {
		return nil, fmt.Errorf("%w: %d (%T)", ErrUnknownType, cmd.Type(), cmd)
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("%w: %T: %v", ErrMalformed, cmd, err)
	}
	return b, nil
}

func encodeUnknown(u Unknown) ([]byte, error) {
	if u.T&IgnoreIfUnknown == 0 || known(u.T) {
		return nil, fmt.Errorf("%w: Unknown with type %#x must carry IgnoreIfUnknown", ErrMalformed, uint8(u.T))
	}
	if len(u.Body) == 0 {
		return []byte("{}"), nil
	}
	if !json.Valid(u.Body) {
		return nil, fmt.Errorf("%w: Unknown body is not JSON", ErrMalformed)
	}
	return u.Body, nil
}

// EncodeJSON is Encode in the form every build reads: a Batch as a TypeBatch JSON array
// of {"t":type,"b":body}, every body verbatim (json.Marshal would compact and HTML-escape
// an Unknown command's body, so decoding and encoding again would change the entry). The
// cluster writes it while a server has not announced FeatureBinaryBatch.
func EncodeJSON(cmd Command) ([]byte, error) {
	if b, ok, err := asBatch(cmd); ok {
		if err != nil {
			return nil, err
		}
		return encodeJSONBatch(b)
	}
	return Encode(cmd)
}

// asBatch reports whether cmd is a Batch (by value or pointer) and returns it; a nil
// *Batch is one, with an error.
func asBatch(cmd Command) (b Batch, ok bool, err error) {
	switch c := cmd.(type) {
	case Batch:
		return c, true, nil
	case *Batch:
		if c == nil {
			return Batch{}, true, fmt.Errorf("%w: nil batch", ErrMalformed)
		}
		return *c, true, nil
	}
	return Batch{}, false, nil
}

func encodeJSONBatch(b Batch) ([]byte, error) {
	out := []byte{byte(TypeBatch), '['}
	for i, c := range b.Commands {
		body, err := encodeBody(c)
		if err != nil {
			return nil, fmt.Errorf("batch command %d: %w", i, err)
		}
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, `{"t":`...)
		out = strconv.AppendUint(out, uint64(c.Type()), 10)
		out = append(out, `,"b":`...)
		out = append(out, body...)
		out = append(out, '}')
	}
	return append(out, ']'), nil
}

// Decode parses a log entry written by Encode. Errors wrap ErrMalformed or
// ErrUnknownType; an unknown type carrying IgnoreIfUnknown decodes to Unknown.
func Decode(b []byte) (Command, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty entry", ErrMalformed)
	}
	t, body := CommandType(b[0]), b[1:]
	if t == TypeBinaryBatch {
		return decodeBinaryBatch(body)
	}
	if t == TypeBatch {
		var items []batchItem
		if err := json.Unmarshal(body, &items); err != nil {
			return nil, fmt.Errorf("%w: batch: %v", ErrMalformed, err)
		}
		cmds := make([]Command, len(items))
		for i, it := range items {
			if it.T == TypeBatch || it.T == TypeBinaryBatch {
				return nil, fmt.Errorf("%w: batch command %d: nested batch", ErrMalformed, i)
			}
			c, err := decodeBody(it.T, it.B)
			if err != nil {
				return nil, fmt.Errorf("batch command %d: %w", i, err)
			}
			cmds[i] = c
		}
		return Batch{Commands: cmds}, nil
	}
	return decodeBody(t, body)
}

func decodeBody(t CommandType, body []byte) (Command, error) {
	k := kinds[t]
	if k == nil {
		if t&IgnoreIfUnknown == 0 {
			return nil, fmt.Errorf("%w: %d", ErrUnknownType, uint8(t))
		}
		// The body is not inspected: a newer node may use any encoding.
		return Unknown{T: t, Body: append(json.RawMessage(nil), body...)}, nil
	}
	cmd, err := k.decodeJSON(body)
	if err != nil {
		return nil, fmt.Errorf("%w: type %d: %v", ErrMalformed, uint8(t), err)
	}
	return cmd, nil
}
