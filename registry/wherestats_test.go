package registry

import (
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The striped where statistics expose what one prometheus.Histogram and one counter child
// did: the same bucket bounds (inclusive), count and sum, summed over every stripe, and a
// where/200 series beside the vector's own in one family.
func TestWhereStats_ExposeOneHistogramAndCounterOverAllStripes(t *testing.T) {
	where := newWhereStats()
	for seq, d := range map[uint64]time.Duration{
		0:  500 * time.Nanosecond,
		1:  time.Microsecond, // on a bound: counted at or below it
		17: 3 * time.Microsecond,
		33: 2 * time.Millisecond, // above every bound
	} {
		where.stripe(seq).observe(d)
	}
	requests := newRequestsCollector(where)
	requests.WithLabelValues("ws", "online", "200").Inc()
	// A success reported the general way must not create the vector's own where/200 child.
	(&nodeMetrics{wsRequests: requests, where: where}).observeRequest("where", nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(requests, newWhereHistogram(where))
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range families {
		byName[f.GetName()] = f
	}

	h := byName["wsregistry_where_duration_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 4 {
		t.Fatalf("count %d, want 4", h.GetSampleCount())
	}
	if want := (500 + 1000 + 3000 + 2e6) / 1e9; math.Abs(h.GetSampleSum()-want) > 1e-12 {
		t.Fatalf("sum %g, want %g", h.GetSampleSum(), want)
	}
	want := map[float64]uint64{1e-6: 2, 2.5e-6: 2, 5e-6: 3, 1e-5: 3, 2.5e-5: 3, 5e-5: 3, 1e-4: 3, 2.5e-4: 3, 1e-3: 3}
	if len(h.GetBucket()) != len(want) {
		t.Fatalf("%d buckets, want %d", len(h.GetBucket()), len(want))
	}
	for _, b := range h.GetBucket() {
		if w, ok := want[b.GetUpperBound()]; !ok || b.GetCumulativeCount() != w {
			t.Errorf("bucket le=%g: %d, want %d (known bound: %v)", b.GetUpperBound(), b.GetCumulativeCount(), w, ok)
		}
	}

	got := map[string]float64{}
	for _, m := range byName["wsregistry_ws_requests_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		got[labels["cmd"]+"/"+labels["status"]] = m.GetCounter().GetValue()
	}
	if got["where/200"] != 4 || got["online/200"] != 1 || len(got) != 2 {
		t.Fatalf("wsregistry_ws_requests_total: %v, want where/200 4 and online/200 1", got)
	}
}

// Lookups on many goroutines at once are all counted (run with -race: stripes are shared
// by the sessions that map to them).
func TestWhereStats_ConcurrentLookupsAreAllCounted(t *testing.T) {
	where := newWhereStats()
	const goroutines, each = 8, 1000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := where.stripe(uint64(g % 3)) // three stripes, each written by several goroutines
			for range each {
				s.observe(time.Duration(g) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	if n := where.count(); n != goroutines*each {
		t.Fatalf("counted %d lookups, want %d", n, goroutines*each)
	}
}

// BenchmarkWhereMetrics is what a lookup's accounting costs: the striped statistics against
// the one counter and one histogram every lookup wrote before (-cpu 1,2: with two cores at
// once the shared cache lines move between them).
func BenchmarkWhereMetrics(b *testing.B) {
	b.Run("striped", func(b *testing.B) {
		where := newWhereStats()
		var seq atomic.Uint64
		b.RunParallel(func(pb *testing.PB) {
			s := where.stripe(seq.Add(1)) // one session per goroutine
			for pb.Next() {
				s.observe(300 * time.Nanosecond)
			}
		})
	})
	b.Run("shared", func(b *testing.B) {
		count := prometheus.NewCounter(prometheus.CounterOpts{Name: "c"})
		seconds := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h", Buckets: []float64{1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3}})
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				count.Inc()
				seconds.Observe((300 * time.Nanosecond).Seconds())
			}
		})
	})
}
