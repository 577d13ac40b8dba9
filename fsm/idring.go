package fsm

// idRing remembers the last limit request ids and their results: a bounded FIFO like
// ring, specialised because every command on every node looks an id up and, once the
// ring is full, forgets the oldest. Keyed by the id's 64-bit hash, forgetting the oldest
// never reads its (long cold) string, and a lookup compares integers: the string is read
// only to confirm a hit, which only a retried command makes.
//
// The hash is FNV-1a, not the runtime's seeded one, so that even two ids with the same
// hash are handled alike on every node: the later one is not remembered (its command
// still applies; only a retry of it would apply again).
type idRing struct {
	limit   int
	table   []idSlot  // open addressing by hash, linear probing, at most half full
	mask    uint64    // len(table)-1
	entries []idEntry // insertion order; when full, entries[head] is the oldest
	head    int
}

// idSlot is one place of the table: an id's hash and where its entry is (plus one: zero is
// an empty slot). The hash beside the index lets a probe compare without reading the
// entry, so a lookup costs one cache line of the table where a Go map took two or three
// (BENCHMARKS.md, round 10).
type idSlot struct {
	hash uint64
	at   uint32
}

type idEntry struct {
	hash uint64
	id   string
	res  result
}

func newIDRing(limit, sizeHint int) *idRing {
	if limit <= 0 || limit > 1<<30 {
		panic("fsm: id ring limit out of range")
	}
	n := min(sizeHint, limit)
	r := &idRing{limit: limit, entries: make([]idEntry, 0, n)}
	r.resize(tableSize(max(n, 8)))
	return r
}

// tableSize is the smallest power of two at least twice n.
func tableSize(n int) int {
	size := 16
	for size < 2*n {
		size *= 2
	}
	return size
}

// resize makes the table size slots and puts every entry back in.
func (r *idRing) resize(size int) {
	r.table = make([]idSlot, size)
	r.mask = uint64(size - 1)
	for i, e := range r.entries {
		pos, _ := r.find(e.hash)
		r.table[pos] = idSlot{hash: e.hash, at: uint32(i + 1)}
	}
}

// find returns the slot holding h, or the empty slot where it would go.
func (r *idRing) find(h uint64) (int, bool) {
	i := h & r.mask
	for {
		s := &r.table[i]
		if s.at == 0 {
			return int(i), false
		}
		if s.hash == h {
			return int(i), true
		}
		i = (i + 1) & r.mask
	}
}

// remove empties h's slot and shifts the slots after it back (Knuth's algorithm R), so
// every remaining hash is still found from its home slot without tombstones.
func (r *idRing) remove(h uint64) {
	pos, ok := r.find(h)
	if !ok {
		return
	}
	i := uint64(pos)
	r.table[i] = idSlot{}
	for j := (i + 1) & r.mask; r.table[j].at != 0; j = (j + 1) & r.mask {
		home := r.table[j].hash & r.mask
		// The slot at j may move back to i unless its home lies cyclically in (i, j].
		if (i < j && (home <= i || home > j)) || (i > j && home <= i && home > j) {
			r.table[i] = r.table[j]
			r.table[j] = idSlot{}
			i = j
		}
	}
}

func hashID(id string) uint64 {
	const (
		offset = 14695981039346656037
		prime  = 1099511628211
	)
	h := uint64(offset)
	for i := 0; i < len(id); i++ {
		h ^= uint64(id[i])
		h *= prime
	}
	return h
}

func (r *idRing) get(id string) (result, bool) { return r.getHashed(hashID(id), id) }

func (r *idRing) getHashed(h uint64, id string) (result, bool) {
	pos, ok := r.find(h)
	if !ok {
		return result{}, false
	}
	e := &r.entries[r.table[pos].at-1]
	if e.id != id {
		return result{}, false
	}
	return e.res, true
}

// add remembers id unless its hash is already remembered: a present id keeps its place
// and result.
func (r *idRing) add(id string, res result) { r.addHashed(hashID(id), id, res) }

func (r *idRing) addHashed(h uint64, id string, res result) {
	if _, ok := r.find(h); ok {
		return
	}
	e := idEntry{hash: h, id: id, res: res}
	var at int
	if len(r.entries) < r.limit {
		if 2*(len(r.entries)+1) > len(r.table) {
			r.resize(2 * len(r.table))
		}
		at = len(r.entries)
		r.entries = append(r.entries, e)
	} else {
		r.remove(r.entries[r.head].hash)
		at = r.head
		r.entries[at] = e
		r.head = (r.head + 1) % r.limit
	}
	pos, _ := r.find(h) // again: removing the oldest may have moved slots
	r.table[pos] = idSlot{hash: h, at: uint32(at + 1)}
}

func (r *idRing) len() int { return len(r.entries) }

// each visits the entries oldest first.
func (r *idRing) each(fn func(string, result)) {
	for _, e := range r.entries[r.head:] {
		fn(e.id, e.res)
	}
	for _, e := range r.entries[:r.head] {
		fn(e.id, e.res)
	}
}
