// Package later defers work to the end of a batch of callbacks. A goroutine that answers
// many requests at once (the callbacks of one raft commit) queues every reply first and
// wakes each connection's writer once afterwards, so a connection's replies of that
// commit leave in one write instead of one each.
package later

// Batch collects work to run when the callbacks of one batch are done. A nil *Batch runs
// work at once, for callers outside any batch. Not safe for concurrent use: a batch
// belongs to the goroutine running its callbacks.
type Batch struct {
	fns []func()
}

// Do runs fn at the end of the batch (at once on a nil Batch).
func (b *Batch) Do(fn func()) {
	if b == nil {
		fn()
		return
	}
	b.fns = append(b.fns, fn)
}

// Run runs what was deferred, in the order it came, and empties the batch.
func (b *Batch) Run() {
	for i, fn := range b.fns {
		b.fns[i] = nil
		fn()
	}
	b.fns = b.fns[:0]
}
