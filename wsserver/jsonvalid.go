package wsserver

// validJSON reports whether b is exactly one JSON value, with optional whitespace
// around it: the answer of encoding/json.Valid, nesting limit included, found in one
// pass without its per-byte state functions. Every message is checked before the
// frame scanner (which trusts valid JSON) reads it, so this is on the path of every
// request; FuzzValidJSON holds it to json.Valid.
func validJSON(b []byte) bool {
	i := validValueEnd(b, skipWS(b, 0), 0)
	return i >= 0 && skipWS(b, i) == len(b)
}

// validValueEnd checks the JSON value that starts at b[i], inside depth open containers
// (they count toward the nesting limit), and returns the index after it, or -1. It lets
// parseRequest check the values it skips with validJSON's own rules.
func validValueEnd(b []byte, i, depth int) int {
	var stackBuf [32]byte
	stack := stackBuf[:0] // the open containers, '{' or '['
	for {
		// A value starts at i.
		if i >= len(b) {
			return -1
		}
		switch c := b[i]; {
		case c == '{' || c == '[':
			if depth+len(stack) >= maxNesting {
				return -1
			}
			closer := byte('}')
			if c == '[' {
				closer = ']'
			}
			i = skipWS(b, i+1)
			if i < len(b) && b[i] == closer {
				i++
				break // an empty container is a complete value
			}
			stack = append(stack, c)
			if c == '{' {
				if i = objectKey(b, i); i < 0 {
					return -1
				}
			}
			continue
		case c == '"':
			i = checkedStringEnd(b, i)
		case c == '-' || (c >= '0' && c <= '9'):
			i = numberEnd(b, i)
		case c == 't':
			i = literalEnd(b, i, "true")
		case c == 'f':
			i = literalEnd(b, i, "false")
		case c == 'n':
			i = literalEnd(b, i, "null")
		default:
			return -1
		}
		if i < 0 {
			return -1
		}
		// A value ended at i: close containers until one wants another value.
		for {
			if len(stack) == 0 {
				return i
			}
			i = skipWS(b, i)
			if i >= len(b) {
				return -1
			}
			top := stack[len(stack)-1]
			if b[i] == ',' {
				i = skipWS(b, i+1)
				if top == '{' {
					if i = objectKey(b, i); i < 0 {
						return -1
					}
				}
				break
			}
			if (top == '{' && b[i] != '}') || (top == '[' && b[i] != ']') {
				return -1
			}
			stack = stack[:len(stack)-1]
			i++
		}
	}
}

// maxNesting is encoding/json's limit on nested objects and arrays.
const maxNesting = 10000

// objectKey checks `"key" :` at b[i] and returns the index after the colon and
// the whitespace that follows, or -1.
func objectKey(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	if i = checkedStringEnd(b, i); i < 0 {
		return -1
	}
	i = skipWS(b, i)
	if i >= len(b) || b[i] != ':' {
		return -1
	}
	return skipWS(b, i+1)
}

// strPlain marks the bytes a JSON string holds as they are: all but control
// characters, the quote and the backslash. Strings are most of a request's bytes, and
// one table lookup per byte is the cheapest test that tells these apart.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// checkedStringEnd checks the string at b[i] == '"' (no control characters, only the
// escapes JSON has) and returns the index after its closing quote, or -1. Like
// encoding/json it does not check UTF-8 (the channel does, for text messages).
func checkedStringEnd(b []byte, i int) int {
	j := i + 1
	for {
		for j < len(b) && strPlain[b[j]] {
			j++
		}
		if j >= len(b) {
			return -1
		}
		switch b[j] {
		case '"':
			return j + 1
		case '\\':
			j++
			if j >= len(b) {
				return -1
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(b) {
					return -1
				}
				for _, h := range b[j+1 : j+5] {
					if !isHex(h) {
						return -1
					}
				}
				j += 4
			default:
				return -1
			}
			j++
		default: // a control character
			return -1
		}
	}
}

// plainStringEnd returns the index of the closing quote of the string whose content
// starts at b[i], or -1 if the string has an escape or a control character (or no end):
// parseRequest leaves those to the general path.
func plainStringEnd(b []byte, i int) int {
	for i < len(b) && strPlain[b[i]] {
		i++
	}
	if i < len(b) && b[i] == '"' {
		return i
	}
	return -1
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// numberEnd checks -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? at b[i] and returns
// the index after it, or -1. What follows is the caller's to check.
func numberEnd(b []byte, i int) int {
	if b[i] == '-' {
		i++
	}
	switch {
	case i >= len(b) || !isDigit(b[i]):
		return -1
	case b[i] == '0':
		i++
	default:
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || !isDigit(b[i]) {
			return -1
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return -1
		}
		for i < len(b) && isDigit(b[i]) {
			i++
		}
	}
	return i
}

func literalEnd(b []byte, i int, lit string) int {
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return -1
	}
	return i + len(lit)
}
