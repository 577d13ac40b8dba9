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
	slot    map[uint64]int32 // hash -> index in entries
	entries []idEntry        // insertion order; when full, entries[head] is the oldest
	head    int
}

type idEntry struct {
	hash uint64
	id   string
	res  result
}

func newIDRing(limit, sizeHint int) *idRing {
	if limit <= 0 || limit > 1<<31-1 {
		panic("fsm: id ring limit out of range")
	}
	n := min(sizeHint, limit)
	return &idRing{limit: limit, slot: make(map[uint64]int32, n), entries: make([]idEntry, 0, n)}
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
	i, ok := r.slot[h]
	if !ok || r.entries[i].id != id {
		return result{}, false
	}
	return r.entries[i].res, true
}

// add remembers id unless its hash is already remembered: a present id keeps its place
// and result.
func (r *idRing) add(id string, res result) { r.addHashed(hashID(id), id, res) }

func (r *idRing) addHashed(h uint64, id string, res result) {
	if _, ok := r.slot[h]; ok {
		return
	}
	e := idEntry{hash: h, id: id, res: res}
	if len(r.entries) < r.limit {
		r.slot[h] = int32(len(r.entries))
		r.entries = append(r.entries, e)
		return
	}
	delete(r.slot, r.entries[r.head].hash)
	r.entries[r.head] = e
	r.slot[h] = int32(r.head)
	r.head = (r.head + 1) % r.limit
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
