package registry

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// paceRing keeps the last few one-second rates of the node's own counters (registrations,
// lookups, proxied calls) for the dashboard's small charts: no external service needed.
type paceRing struct {
	rates [3][]float64
	next  int
	full  bool
}

func newPaceRing(size int) paceRing {
	var r paceRing
	for i := range r.rates {
		r.rates[i] = make([]float64, size)
	}
	return r
}

func (r *paceRing) add(v [3]float64) {
	for i := range r.rates {
		r.rates[i][r.next] = v[i]
	}
	r.next = (r.next + 1) % len(r.rates[0])
	r.full = r.full || r.next == 0
}

// series returns each rate oldest first.
func (r *paceRing) series() [3][]float64 {
	var out [3][]float64
	for i, ring := range r.rates {
		if r.full {
			out[i] = append(append(out[i], ring[r.next:]...), ring[:r.next]...)
		} else {
			out[i] = append(out[i], ring[:r.next]...)
		}
	}
	return out
}

// Pace is GET /v1/cluster "pace": this node's rates per second, one sample a second, oldest
// first.
type Pace struct {
	IntervalMS    int64     `json:"interval_ms"`
	Registrations []float64 `json:"registrations"` // agents' online answered 200
	Lookups       []float64 `json:"lookups"`       // agents' where answered
	Fetches       []float64 `json:"fetches"`       // proxied calls (any result)
}

// Pace returns the node's recent rates.
func (n *Node) Pace() Pace {
	if n.bal == nil {
		return Pace{IntervalMS: 1000}
	}
	n.bal.mu.Lock()
	s := n.bal.pace.series()
	n.bal.mu.Unlock()
	return Pace{IntervalMS: 1000, Registrations: s[0], Lookups: s[1], Fetches: s[2]}
}

// samplePace adds a sample once a second.
func (n *Node) samplePace(now time.Time) {
	b := n.bal
	if now.Sub(b.paceAt) < time.Second {
		return
	}
	cur := [3]float64{counterValue(n.metrics.onlineOK), float64(n.metrics.where.count()), histogramCount(n.metrics.fetchSeconds)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.paceAt.IsZero() {
		secs := now.Sub(b.paceAt).Seconds()
		var rates [3]float64
		for i := range cur {
			rates[i] = max(0, cur[i]-b.paceLast[i]) / secs
		}
		b.pace.add(rates)
	}
	b.paceLast, b.paceAt = cur, now
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if c.Write(&m) != nil || m.Counter == nil {
		return 0
	}
	return m.Counter.GetValue()
}

// histogramCount sums the observations of every child of h.
func histogramCount(h *prometheus.HistogramVec) float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { h.Collect(ch); close(ch) }()
	var total float64
	for metric := range ch {
		var m dto.Metric
		if metric.Write(&m) == nil && m.Histogram != nil {
			total += float64(m.Histogram.GetSampleCount())
		}
	}
	return total
}
