package wsserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf8"
)

// Frame modes.
const (
	ModeRequest  = 0
	ModeResponse = 1
	ModeAbort    = 2
)

// ErrMalformed is wrapped by every decoding error of this package.
var ErrMalformed = errors.New("malformed frame")

// Frame is one message: {"id":<int>,"mode":<0|1|2>,"twoway":<bool>,"data":<any>}.
type Frame struct {
	ID     int64
	Mode   int
	TwoWay bool
	// Data is the raw "data" value; nil when the key is absent. After
	// DecodeFrame it aliases the decoded buffer.
	Data json.RawMessage
}

// Request is the data of a mode-0 frame.
type Request struct {
	Protocol string          `json:"protocol"`
	Cmd      string          `json:"cmd"`
	Props    json.RawMessage `json:"props"`
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// DecodeFrame parses one message. The returned Data aliases b. Unknown keys
// are ignored; of duplicate keys the last wins (as JSON.parse does). "twoway"
// is true only for the literal true. The shape of Data is not checked here:
// see DecodeRequest and the channel, which check it where it is used.
func DecodeFrame(b []byte) (Frame, error) {
	var f Frame
	if !validJSON(b) {
		return f, malformed("not JSON")
	}
	b = trimWS(b)
	if len(b) == 0 || b[0] != '{' {
		return f, malformed("frame is not an object")
	}
	var idRaw, modeRaw []byte
	err := eachMember(b, func(k, v []byte) error {
		switch {
		case keyIs(k, "id"):
			idRaw = v
		case keyIs(k, "mode"):
			modeRaw = v
		case keyIs(k, "twoway"):
			f.TwoWay = string(v) == "true"
		case keyIs(k, "data"):
			f.Data = v
		}
		return nil
	})
	if err != nil {
		return Frame{}, err
	}
	if idRaw == nil {
		return Frame{}, malformed("id missing")
	}
	id, ok := parseInt(idRaw)
	if !ok {
		return Frame{}, malformed("id %s is not an integer", clip(idRaw))
	}
	f.ID = id
	if modeRaw == nil {
		return Frame{}, malformed("mode missing")
	}
	mode, ok := parseInt(modeRaw)
	if !ok || mode < ModeRequest || mode > ModeAbort {
		return Frame{}, malformed("unknown mode %s", clip(modeRaw))
	}
	f.Mode = int(mode)
	return f, nil
}

// AppendJSON appends the frame as {"id":..,"mode":..,"twoway":..,"data":..}.
// A nil Data is written as null. Data must be valid JSON.
func (f Frame) AppendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, f.ID, 10)
	b = append(b, `,"mode":`...)
	b = strconv.AppendInt(b, int64(f.Mode), 10)
	b = append(b, `,"twoway":`...)
	b = strconv.AppendBool(b, f.TwoWay)
	b = append(b, `,"data":`...)
	if f.Data == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, f.Data...)
	}
	return append(b, '}')
}

// DecodeRequest parses the data of a request frame: an object with string
// "cmd" and "protocol"; "props" is optional (nil when absent).
func DecodeRequest(data []byte) (Request, error) {
	r, err := decodeRequest(data)
	if err != nil {
		return Request{}, err
	}
	return Request{Protocol: string(r.protocol), Cmd: string(r.cmd), Props: r.props}, nil
}

type rawRequest struct {
	protocol, cmd []byte // unquoted
	props         []byte // raw, nil if absent
}

// decodeRequest expects data to be valid JSON (it comes out of DecodeFrame).
func decodeRequest(data []byte) (rawRequest, error) {
	var r rawRequest
	data = trimWS(data)
	if len(data) == 0 || data[0] != '{' {
		return r, malformed("request data is not an object")
	}
	var protoRaw, cmdRaw []byte
	err := eachMember(data, func(k, v []byte) error {
		switch {
		case keyIs(k, "cmd"):
			cmdRaw = v
		case keyIs(k, "protocol"):
			protoRaw = v
		case keyIs(k, "props"):
			r.props = v
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	var ok bool
	if r.cmd, ok = unquote(cmdRaw); !ok {
		return r, malformed("request cmd is not a string")
	}
	if r.protocol, ok = unquote(protoRaw); !ok {
		return r, malformed("request protocol is not a string")
	}
	return r, nil
}

// parseRequest reads, in one pass, the message almost every request is: a request
// frame (mode 0) with data, an object with string "cmd" and "protocol", written
// without escapes in keys, cmd or protocol, with an integer id of at most 18 digits
// and without repeated keys. ok is false for anything else, which the caller hands to
// the general path (DecodeFrame, then decodeRequest): that path alone decides what
// other messages mean, so declining is always safe. When ok, the result is the
// general path's, and the message was valid JSON. FuzzParseRequest holds the two
// together.
func parseRequest(b []byte) (id int64, twoway bool, r rawRequest, ok bool) {
	const (
		seenID = 1 << iota
		seenMode
		seenTwoway
		seenData
	)
	var seen uint8
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return 0, false, rawRequest{}, false
	}
	i = skipWS(b, i+1)
	for {
		k, v := objectMember(b, i)
		if v < 0 {
			return 0, false, rawRequest{}, false
		}
		var bit uint8
		switch string(b[i+1 : k]) {
		case "id":
			bit = seenID
			id, i = plainIntEnd(b, v)
		case "mode":
			bit = seenMode
			i = -1
			if b[v] == '0' && (v+1 == len(b) || !numberByte(b[v+1])) {
				i = v + 1
			}
		case "twoway":
			bit = seenTwoway
			i = validValueEnd(b, v, 1)
			twoway = i == v+4 && string(b[v:i]) == "true"
		case "data":
			bit = seenData
			r, i = parseRequestData(b, v)
		default:
			i = validValueEnd(b, v, 1)
		}
		if i < 0 || seen&bit != 0 { // last-wins for repeated keys is the general path's
			return 0, false, rawRequest{}, false
		}
		seen |= bit
		if i = skipWS(b, i); i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i >= len(b) || b[i] != '}' || skipWS(b, i+1) != len(b) || seen&(seenID|seenMode|seenData) != seenID|seenMode|seenData {
			return 0, false, rawRequest{}, false
		}
		return id, twoway, r, true
	}
}

// parseRequestData reads the data object of parseRequest's frame at b[i] (inside the
// frame's object) and returns the index after it, or -1 to decline.
func parseRequestData(b []byte, i int) (r rawRequest, end int) {
	const (
		seenCmd = 1 << iota
		seenProtocol
		seenProps
	)
	var seen uint8
	if i >= len(b) || b[i] != '{' {
		return rawRequest{}, -1
	}
	i = skipWS(b, i+1)
	for {
		k, v := objectMember(b, i)
		if v < 0 {
			return rawRequest{}, -1
		}
		var bit uint8
		switch string(b[i+1 : k]) {
		case "cmd":
			bit = seenCmd
			r.cmd, i = plainString(b, v)
		case "protocol":
			bit = seenProtocol
			r.protocol, i = plainString(b, v)
		case "props":
			bit = seenProps
			i = validValueEnd(b, v, 2)
			if i >= 0 {
				r.props = b[v:i]
			}
		default:
			i = validValueEnd(b, v, 2)
		}
		if i < 0 || seen&bit != 0 {
			return rawRequest{}, -1
		}
		seen |= bit
		if i = skipWS(b, i); i < len(b) && b[i] == ',' {
			i = skipWS(b, i+1)
			continue
		}
		if i >= len(b) || b[i] != '}' || seen&(seenCmd|seenProtocol) != seenCmd|seenProtocol {
			return rawRequest{}, -1
		}
		return r, i + 1
	}
}

// objectMember reads `"key" :` at b[i], a key without escapes, and returns the index of
// the key's closing quote and the index where the value starts (-1 to decline).
func objectMember(b []byte, i int) (keyEnd, value int) {
	if i >= len(b) || b[i] != '"' {
		return 0, -1
	}
	k := plainStringEnd(b, i+1)
	if k < 0 {
		return 0, -1
	}
	v := skipWS(b, k+1)
	if v >= len(b) || b[v] != ':' {
		return 0, -1
	}
	v = skipWS(b, v+1)
	if v >= len(b) {
		return 0, -1
	}
	return k, v
}

// plainString returns the content of the string at b[i] when it has no escapes (it
// aliases b), and the index after it; -1 otherwise.
func plainString(b []byte, i int) ([]byte, int) {
	if b[i] != '"' {
		return nil, -1
	}
	e := plainStringEnd(b, i+1)
	if e < 0 {
		return nil, -1
	}
	return b[i+1 : e], e + 1
}

// plainIntEnd reads the integer -?(0|[1-9][0-9]*) of at most 18 digits (no overflow)
// at b[i], which no fraction or exponent follows, and returns it with the index after
// it; -1 for anything else.
func plainIntEnd(b []byte, i int) (int64, int) {
	neg := b[i] == '-'
	if neg {
		i++
	}
	start := i
	var n int64
	for i < len(b) && isDigit(b[i]) && i-start < 18 {
		n = n*10 + int64(b[i]-'0')
		i++
	}
	switch {
	case i == start, i-start > 1 && b[start] == '0', i < len(b) && numberByte(b[i]):
		return 0, -1
	}
	if neg {
		n = -n
	}
	return n, i
}

// numberByte reports whether c can continue a JSON number.
func numberByte(c byte) bool {
	return isDigit(c) || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'
}

// response is the data of a mode-1 frame.
type response struct {
	status  int
	code    string // status given as a string
	hasData bool
	data    []byte
	message string
}

func decodeResponse(data []byte) (response, error) {
	var r response
	data = trimWS(data)
	if len(data) == 0 || data[0] != '{' {
		return r, malformed("response data is not an object")
	}
	var statusRaw, msgRaw []byte
	err := eachMember(data, func(k, v []byte) error {
		switch {
		case keyIs(k, "status"):
			statusRaw = v
		case keyIs(k, "data"):
			r.hasData = true
			r.data = v
		case keyIs(k, "message"):
			msgRaw = v
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	switch {
	case statusRaw == nil:
		return r, malformed("response status missing")
	case statusRaw[0] == '"':
		s, _ := unquote(statusRaw)
		r.code = string(s)
	default:
		n, ok := parseInt(statusRaw)
		if !ok || n < math.MinInt32 || n > math.MaxInt32 {
			return r, malformed("response status %s is neither an integer nor a string", clip(statusRaw))
		}
		r.status = int(n)
	}
	if msgRaw != nil {
		if s, ok := unquote(msgRaw); ok {
			r.message = string(s)
		} else if string(msgRaw) != "null" {
			r.message = string(msgRaw)
		}
	}
	return r, nil
}

// ---- encoders (wire format and key order of the original) ----

// appendRequest: {"id":N,"twoway":T,"data":{"cmd":"..","props":P,"protocol":".."},"mode":0}
func appendRequest(b []byte, id int64, twoway bool, protocol, cmd string, props []byte) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, id, 10)
	b = append(b, `,"twoway":`...)
	b = strconv.AppendBool(b, twoway)
	b = append(b, `,"data":{"cmd":`...)
	b = appendString(b, cmd)
	b = append(b, `,"props":`...)
	b = append(b, props...)
	b = append(b, `,"protocol":`...)
	b = appendString(b, protocol)
	return append(b, `},"mode":0}`...)
}

// appendAbort: {"id":N,"twoway":false,"data":TARGET,"mode":2}
func appendAbort(b []byte, id, target int64) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, id, 10)
	b = append(b, `,"twoway":false,"data":`...)
	b = strconv.AppendInt(b, target, 10)
	return append(b, `,"mode":2}`...)
}

// appendSuccess: {"id":N,"mode":1,"twoway":false,"data":{"status":200,"data":R}},
// or {"status":200} without a data key when result is nil ("undefined").
func appendSuccess(b []byte, id int64, result []byte) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, id, 10)
	b = append(b, `,"mode":1,"twoway":false,"data":{"status":200`...)
	if result != nil {
		b = append(b, `,"data":`...)
		b = append(b, result...)
	}
	return append(b, `}}`...)
}

// appendFailure: {"id":N,"mode":1,"twoway":false,"data":{"status":S,"data":null,"message":"M"}}
// where S is the number status, or the string code when code is not empty.
func appendFailure(b []byte, id int64, status int, code, message string) []byte {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, id, 10)
	b = append(b, `,"mode":1,"twoway":false,"data":{"status":`...)
	if code != "" {
		b = appendString(b, code)
	} else {
		b = strconv.AppendInt(b, int64(status), 10)
	}
	b = append(b, `,"data":null,"message":`...)
	b = appendString(b, message)
	return append(b, `}}`...)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string the way JSON.stringify does
// (no HTML escaping, no escaping of U+2028/U+2029); invalid UTF-8 becomes U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// ---- a small scanner over JSON already checked by validJSON ----

func isWS(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func trimWS(b []byte) []byte {
	for len(b) > 0 && isWS(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isWS(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func skipWS(b []byte, i int) int {
	for i < len(b) && isWS(b[i]) {
		i++
	}
	return i
}

// stringEnd returns the index after the string that starts at b[i] == '"'.
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(b)
}

// valueEnd returns the index after the value that starts at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = stringEnd(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && !isWS(b[j]) {
			j++
		}
		return j
	}
}

// eachMember calls fn with the raw key (quotes included) and raw value of
// every member of the object obj (valid JSON, trimmed, starting with '{').
func eachMember(obj []byte, fn func(k, v []byte) error) error {
	i := skipWS(obj, 1)
	if i < len(obj) && obj[i] == '}' {
		return nil
	}
	for i < len(obj) {
		if obj[i] != '"' {
			return malformed("bad object")
		}
		ke := stringEnd(obj, i)
		k := obj[i:ke]
		i = skipWS(obj, ke)
		if i >= len(obj) || obj[i] != ':' {
			return malformed("bad object")
		}
		i = skipWS(obj, i+1)
		if i >= len(obj) {
			return malformed("bad object")
		}
		ve := valueEnd(obj, i)
		if err := fn(k, obj[i:ve]); err != nil {
			return err
		}
		i = skipWS(obj, ve)
		if i >= len(obj) || obj[i] == '}' {
			return nil
		}
		if obj[i] != ',' {
			return malformed("bad object")
		}
		i = skipWS(obj, i+1)
	}
	return nil
}

// keyIs reports whether the raw (quoted) key k equals name.
func keyIs(k []byte, name string) bool {
	if len(k) == len(name)+2 && string(k[1:len(k)-1]) == name {
		return true
	}
	// Rare: a key written with escapes, e.g. "\u0069d".
	for _, c := range k {
		if c == '\\' {
			s, ok := unquote(k)
			return ok && string(s) == name
		}
	}
	return false
}

// unquote returns the content of the JSON string v, or false if v is not a
// string. Without escapes it aliases v.
func unquote(v []byte) ([]byte, bool) {
	if len(v) < 2 || v[0] != '"' {
		return nil, false
	}
	inner := v[1 : len(v)-1]
	for _, c := range inner {
		if c == '\\' {
			var s string
			if json.Unmarshal(v, &s) != nil {
				return nil, false
			}
			return []byte(s), true
		}
	}
	return inner, true
}

// parseInt parses a JSON number holding an integer (1, -3, 1.0, 1e3).
func parseInt(v []byte) (int64, bool) {
	if len(v) == 0 || (v[0] != '-' && (v[0] < '0' || v[0] > '9')) {
		return 0, false
	}
	if n, err := strconv.ParseInt(string(v), 10, 64); err == nil {
		return n, true
	}
	f, err := strconv.ParseFloat(string(v), 64)
	if err != nil || f != math.Trunc(f) || f < -(1<<53) || f > 1<<53 {
		return 0, false
	}
	return int64(f), true
}

func clip(b []byte) string {
	if len(b) > 32 {
		return string(b[:32]) + "..."
	}
	return string(b)
}
