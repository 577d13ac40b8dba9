package registry

import (
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
)

// whereStats counts successful lookups and times them (wsregistry_ws_requests_total's
// where/200 series and wsregistry_where_duration_seconds). Every core's lookups used to
// write the same counter and histogram: a prometheus.Histogram observation is four atomic
// writes on shared cache lines, ~25 ns alone and ~250 ns with two cores at it (a
// where's own work is under a microsecond), and it grows with the cores. Here each agent
// session writes one of whereStripeCount stripes, each on cache lines of its own; a
// scrape sums them.
type whereStats struct {
	stripes [whereStripeCount]whereStripe
	// created (Unix nanoseconds, not a time.Time: a pointer in the type would put a
	// header before it and shift the stripes off their lines) is exposed as the series'
	// created timestamp, as client_golang's own series do.
	created int64
}

func newWhereStats() *whereStats {
	return &whereStats{created: time.Now().UnixNano()}
}

const whereStripeCount = 16

// whereBucketsNanos are the histogram's upper bounds (le, inclusive): 1 µs to 1 ms.
var whereBucketsNanos = [...]uint64{1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 1e6}

// whereStripe is one stripe's lookups per bucket (the last counts those above every bound)
// and their summed duration. The count is the sum of the buckets, so a scrape never sees
// buckets above the count.
type whereStripe struct {
	buckets  [len(whereBucketsNanos) + 1]atomic.Uint64
	sumNanos atomic.Uint64
	_        [cacheLine - whereStripeWords*8%cacheLine]byte
}

// whereStripeWords is a stripe's words before its padding, which rounds a stripe up to a
// whole number of 64-byte lines (two: 128 bytes). Stripes side by side then share no line
// whenever the array starts on a line, which a whereStats allocated on its own does: the
// stripes come first, it holds no pointers (so no allocation header before it), and its
// size class (2,304 bytes) is a multiple of 64. On CPUs with 128-byte lines neighbours can
// share one, which costs speed only.
const (
	whereStripeWords = len(whereBucketsNanos) + 2
	cacheLine        = 64
)

// A stripe is whole lines: a field added without updating whereStripeWords fails here.
var _ [0]struct{} = [unsafe.Sizeof(whereStripe{}) % cacheLine]struct{}{}

// stripe is the stripe of the session numbered seq (nil session: 0).
func (w *whereStats) stripe(seq uint64) *whereStripe {
	return &w.stripes[seq%whereStripeCount]
}

// observe counts one lookup that took d.
func (s *whereStripe) observe(d time.Duration) {
	ns := uint64(max(d, 0))
	i := 0
	for i < len(whereBucketsNanos) && ns > whereBucketsNanos[i] {
		i++
	}
	s.buckets[i].Add(1)
	s.sumNanos.Add(ns)
}

// totals sums the stripes: the count, the summed duration and the cumulative count at or
// below each bound.
func (w *whereStats) totals() (count uint64, sum time.Duration, cumulative [len(whereBucketsNanos)]uint64) {
	var perBucket [len(whereBucketsNanos) + 1]uint64
	var sumNanos uint64
	for i := range w.stripes {
		s := &w.stripes[i]
		for b := range s.buckets {
			perBucket[b] += s.buckets[b].Load()
		}
		sumNanos += s.sumNanos.Load()
	}
	for b := range cumulative {
		count += perBucket[b]
		cumulative[b] = count
	}
	count += perBucket[len(whereBucketsNanos)]
	return count, time.Duration(sumNanos), cumulative
}

// count is how many lookups succeeded.
func (w *whereStats) count() uint64 {
	n, _, _ := w.totals()
	return n
}

// whereHistogram exposes whereStats as wsregistry_where_duration_seconds.
type whereHistogram struct {
	stats *whereStats
	desc  *prometheus.Desc
}

func newWhereHistogram(stats *whereStats) *whereHistogram {
	return &whereHistogram{stats: stats, desc: prometheus.NewDesc("wsregistry_where_duration_seconds", whereSecondsHelp, nil, nil)}
}

const whereSecondsHelp = "Time to answer a where from local state."

func (h *whereHistogram) Describe(ch chan<- *prometheus.Desc) { ch <- h.desc }

func (h *whereHistogram) Collect(ch chan<- prometheus.Metric) {
	count, sum, cumulative := h.stats.totals()
	buckets := make(map[float64]uint64, len(cumulative))
	for i, c := range cumulative {
		buckets[float64(whereBucketsNanos[i])/1e9] = c
	}
	ch <- prometheus.MustNewConstHistogramWithCreatedTimestamp(h.desc, count, sum.Seconds(), buckets, time.Unix(0, h.stats.created))
}

// requestsCollector is wsregistry_ws_requests_total: the counter vector's series, and the
// where/200 series from whereStats (observeRequest never creates that child in the vector:
// a duplicate series would fail Gather).
type requestsCollector struct {
	*prometheus.CounterVec
	where     *whereStats
	whereDesc *prometheus.Desc
}

const (
	requestsName = "wsregistry_ws_requests_total"
	requestsHelp = "Requests from agents by protocol, command and reply status (cmd is online, where or other)."
)

var requestsLabels = []string{"protocol", "cmd", "status"}

func newRequestsCollector(where *whereStats) *requestsCollector {
	return &requestsCollector{
		CounterVec: prometheus.NewCounterVec(prometheus.CounterOpts{Name: requestsName, Help: requestsHelp}, requestsLabels),
		where:      where,
		whereDesc:  prometheus.NewDesc(requestsName, requestsHelp, requestsLabels, nil),
	}
}

func (c *requestsCollector) Collect(ch chan<- prometheus.Metric) {
	c.CounterVec.Collect(ch)
	ch <- prometheus.MustNewConstMetricWithCreatedTimestamp(c.whereDesc, prometheus.CounterValue, float64(c.where.count()), time.Unix(0, c.where.created), "ws", "where", "200")
}
