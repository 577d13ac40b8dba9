package fsm

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
)

// kind is everything this build knows about one command type: how its body reads in
// each encoding, how it writes in the binary one (the JSON body is json.Marshal of the
// struct), and how it changes the state. Decode, Encode, EncodeJSON and Apply find it in
// kinds by the type byte, so none of them has a case per command.
type kind struct {
	decodeJSON   func(body []byte) (Command, error)
	decodeBinary func(body []byte) (Command, error) // the error only says the body is short
	// appendBinary takes the kind's struct or a non-nil pointer to it (Encode accepts both).
	appendBinary func(out []byte, cmd Command) ([]byte, error)
	// requestID is false for a value of another Go type that claims this type byte.
	requestID func(cmd Command) (string, bool)
	apply     func(st *state, cmd Command) error
}

// kinds holds the commands this build knows, indexed by their type byte; a nil entry is a
// type it does not know. The containers TypeBatch and TypeBinaryBatch have no entry:
// Decode and Apply open them and use the entries of what they hold. Built once at init and
// never written after.
//
// A new command is one entry here plus its type constant, struct and Type method. Its
// binary body is its fields in declaration order (see TypeBinaryBatch); a field added later
// goes at the end, where older builds skip it.
var kinds = [256]*kind{
	TypeRegister: define(kindFuncs[Register]{
		readBinary: func(r binReader) (Register, error) {
			var c Register
			c.RequestID = r.string()
			c.Reg.Namespace, c.Reg.Address, c.Reg.Session.Node = r.strings3()
			c.Reg.Session.Incarnation, c.Reg.Session.Seq = r.uvarint(), r.uvarint()
			c.Reg.Since = r.varint()
			return c, r.err
		},
		appendBinary: func(out []byte, c Register) []byte {
			out = appendString(out, c.RequestID)
			out = appendString(out, c.Reg.Namespace)
			out = appendString(out, c.Reg.Address)
			out = appendSession(out, c.Reg.Session)
			return binary.AppendVarint(out, c.Reg.Since)
		},
		requestID: func(c Register) string { return c.RequestID },
		apply:     func(st *state, c Register) error { return st.registerSuperseding(c.Reg) },
	}),

	TypeDeregister: define(kindFuncs[Deregister]{
		readBinary: func(r binReader) (Deregister, error) {
			var c Deregister
			c.RequestID = r.string()
			c.Session = r.session()
			return c, r.err
		},
		appendBinary: func(out []byte, c Deregister) []byte {
			out = appendString(out, c.RequestID)
			return appendSession(out, c.Session)
		},
		requestID: func(c Deregister) string { return c.RequestID },
		apply:     func(st *state, c Deregister) error { return st.deregister(c.Session) },
	}),

	TypePurgeNode: define(kindFuncs[PurgeNode]{
		readBinary: func(r binReader) (PurgeNode, error) {
			var c PurgeNode
			c.RequestID = r.string()
			c.Node = r.string()
			c.UpToIncarnation = r.uvarint()
			return c, r.err
		},
		appendBinary: func(out []byte, c PurgeNode) []byte {
			out = appendString(out, c.RequestID)
			out = appendString(out, c.Node)
			return binary.AppendUvarint(out, c.UpToIncarnation)
		},
		requestID: func(c PurgeNode) string { return c.RequestID },
		apply:     func(st *state, c PurgeNode) error { return st.purgeNode(c.Node, c.UpToIncarnation) },
	}),

	TypeSetNode: define(kindFuncs[SetNode]{
		readBinary: func(r binReader) (SetNode, error) {
			var c SetNode
			c.RequestID = r.string()
			c.Meta.ID = r.string()
			c.Meta.WSAddr = r.string()
			c.Meta.HTTPAddr = r.string()
			c.Meta.RaftAddr = r.string()
			c.Meta.Incarnation = r.uvarint()
			c.Meta.Features = r.uvarint()
			if r.err == nil && len(r.b) > 0 { // appended later: absent in older builds' entries
				c.Meta.Version = r.string()
				c.Meta.Draining = r.uvarint() != 0
			}
			return c, r.err
		},
		appendBinary: func(out []byte, c SetNode) []byte {
			out = appendString(out, c.RequestID)
			out = appendString(out, c.Meta.ID)
			out = appendString(out, c.Meta.WSAddr)
			out = appendString(out, c.Meta.HTTPAddr)
			out = appendString(out, c.Meta.RaftAddr)
			out = binary.AppendUvarint(out, c.Meta.Incarnation)
			out = binary.AppendUvarint(out, c.Meta.Features)
			out = appendString(out, c.Meta.Version)
			return binary.AppendUvarint(out, boolUvarint(c.Meta.Draining))
		},
		requestID: func(c SetNode) string { return c.RequestID },
		apply:     func(st *state, c SetNode) error { return st.setNode(c.Meta) },
	}),

	TypeRemoveNode: define(kindFuncs[RemoveNode]{
		readBinary: func(r binReader) (RemoveNode, error) {
			var c RemoveNode
			c.RequestID = r.string()
			c.Node = r.string()
			return c, r.err
		},
		appendBinary: func(out []byte, c RemoveNode) []byte {
			out = appendString(out, c.RequestID)
			return appendString(out, c.Node)
		},
		requestID: func(c RemoveNode) string { return c.RequestID },
		apply:     func(st *state, c RemoveNode) error { return st.removeNode(c.Node) },
	}),

	TypeUnregister: define(kindFuncs[Unregister]{
		readBinary: func(r binReader) (Unregister, error) {
			var c Unregister
			c.RequestID = r.string()
			c.Session = r.session()
			c.Namespace = r.string()
			return c, r.err
		},
		appendBinary: func(out []byte, c Unregister) []byte {
			out = appendString(out, c.RequestID)
			out = appendSession(out, c.Session)
			return appendString(out, c.Namespace)
		},
		requestID: func(c Unregister) string { return c.RequestID },
		apply:     func(st *state, c Unregister) error { return st.unregister(c.Session, c.Namespace) },
	}),

	TypeAdopt: adoptKind, // adopt.go
}

// kindFuncs is an entry of kinds as it is written: typed by its struct C.
type kindFuncs[C Command] struct {
	// readBinary reads C's fields from the body in r and returns r.err. r comes by value:
	// a pointer passed through a func value escapes, and would cost an allocation per
	// command decoded.
	readBinary   func(r binReader) (C, error)
	appendBinary func(out []byte, c C) []byte
	requestID    func(c C) string
	// apply changes the state and records what it changed in st.changes.
	apply func(st *state, c C) error
}

// define turns the typed functions of one command into an entry of kinds.
func define[C Command](f kindFuncs[C]) *kind {
	return &kind{
		decodeJSON: func(body []byte) (Command, error) {
			var c C
			if err := json.Unmarshal(body, &c); err != nil {
				return nil, err
			}
			return c, nil
		},
		decodeBinary: func(body []byte) (Command, error) {
			c, err := f.readBinary(binReader{b: body})
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		appendBinary: func(out []byte, cmd Command) ([]byte, error) {
			if c, ok := cmd.(C); ok {
				return f.appendBinary(out, c), nil
			}
			// *C has no methods as far as the compiler knows, so cmd is asserted as an any.
			if p, ok := any(cmd).(*C); ok {
				return f.appendBinary(out, *p), nil
			}
			return nil, fmt.Errorf("%w: %d (%T)", ErrUnknownType, cmd.Type(), cmd)
		},
		requestID: func(cmd Command) (string, bool) {
			c, ok := cmd.(C)
			if !ok {
				return "", false
			}
			return f.requestID(c), true
		},
		apply: func(st *state, cmd Command) error { return f.apply(st, cmd.(C)) },
	}
}

// kindOf is the entry for cmd's type, nil for a type this build does not know and for
// the containers.
func kindOf(cmd Command) *kind {
	if cmd == nil {
		return nil
	}
	return kinds[cmd.Type()]
}

// known reports whether this build reads type t: a command of kinds or a container.
func known(t CommandType) bool {
	return t == TypeBatch || t == TypeBinaryBatch || kinds[t] != nil
}
