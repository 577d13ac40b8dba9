// Package benchkit is what the load generators share: the result line they write, latency
// recorders, and the CPU and system calls of the server processes read from /proc. Both
// cmd/wsbench and bench/etcd (a module of its own) use it, so their lines compare field for
// field in `wsbench table` and `wsbench ratios`. Linux only; standard library only.
package benchkit

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Result is one JSON line of bench/results/<date>.jsonl.
type Result struct {
	Time        string             `json:"time"`
	Run         string             `json:"run,omitempty"` // groups the lines of one bench.sh invocation
	Workload    string             `json:"workload"`
	Variant     string             `json:"variant,omitempty"`
	Pattern     string             `json:"pattern,omitempty"` // generator pattern: pipelined or agent (register, where, echo)
	Concurrency int                `json:"concurrency"`
	Conns       int                `json:"conns"`
	Ops         int64              `json:"ops"`
	Seconds     float64            `json:"seconds"`
	OpsPerS     float64            `json:"ops_per_s"`
	P50us       float64            `json:"p50_us"`
	P90us       float64            `json:"p90_us"`
	P99us       float64            `json:"p99_us"`
	Maxus       float64            `json:"max_us"`
	Errors      int64              `json:"errors"`
	ServerCPUus float64            `json:"server_cpu_us_per_op"`
	ClientCPUus float64            `json:"client_cpu_us_per_op"`
	Extra       map[string]float64 `json:"extra,omitempty"`
	Note        string             `json:"note,omitempty"`
}

// Recorder collects one worker's latencies; one per goroutine, merged at the end.
type Recorder struct {
	Lat     []int64 // ns
	Errors  int64
	Done    []int64 // completion times (ns since start), only when gaps are wanted
	LastErr error   // the last error seen, reported in Result.Note
}

// Merged gathers the recorders of one run.
type Merged struct {
	mu   sync.Mutex
	recs []*Recorder
}

// Add adds a worker's recorder.
func (m *Merged) Add(r *Recorder) {
	m.mu.Lock()
	m.recs = append(m.recs, r)
	m.mu.Unlock()
}

// Fill sets res's operation count, errors, latency quantiles and rate (res.Seconds set).
func (m *Merged) Fill(res *Result) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var all []int64
	for _, r := range m.recs {
		all = append(all, r.Lat...)
		res.Errors += r.Errors
		if r.LastErr != nil {
			res.Note = "last error: " + r.LastErr.Error()
		}
	}
	slices.Sort(all)
	res.Ops = int64(len(all))
	q := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		i := min(int(p*float64(len(all))), len(all)-1)
		return float64(all[i]) / 1e3
	}
	res.P50us, res.P90us, res.P99us = q(0.50), q(0.90), q(0.99)
	if len(all) > 0 {
		res.Maxus = float64(all[len(all)-1]) / 1e3
	}
	if res.Seconds > 0 {
		res.OpsPerS = float64(res.Ops) / res.Seconds
	}
}

// MaxGap is the longest interval between consecutive completions of all recorders (ns),
// and the longest one seen by a single recorder.
func (m *Merged) MaxGap(start, end int64) (global, perWorker int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var all []int64
	for _, r := range m.recs {
		g := gapOf(append([]int64{start}, append(slices.Clone(r.Done), end)...))
		perWorker = max(perWorker, g)
		all = append(all, r.Done...)
	}
	all = append(all, start, end)
	return gapOf(all), perWorker
}

func gapOf(ts []int64) int64 {
	slices.Sort(ts)
	var g int64
	for i := 1; i < len(ts); i++ {
		g = max(g, ts[i]-ts[i-1])
	}
	return g
}

// CPUTicks is utime+stime of pid in clock ticks (USER_HZ, 100 on Linux).
func CPUTicks(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// Fields after the command (which may hold spaces) start after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, nil
}

const userHz = 100

// Syscalls is the read- and write-family system calls pid has made (syscr, syscw of
// /proc/<pid>/io): on loopback a server's CPU per request follows them closely.
func Syscalls(pid int) (reads, writes int64, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/io")
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ": ")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes, nil
}

// RSSBytes is VmRSS of pid.
func RSSBytes(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			kb, err := strconv.ParseInt(f[1], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

// CPUMeter measures the CPU the server processes and this process spend between StartCPU
// and Stop, and the servers' read and write system calls.
type CPUMeter struct {
	pids   []int
	before map[int]int64
	io     map[int][2]int64
	self   time.Duration
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// StartCPU starts measuring the processes pids and this one.
func StartCPU(pids []int) *CPUMeter {
	m := &CPUMeter{pids: pids, before: map[int]int64{}, io: map[int][2]int64{}, self: selfCPU()}
	for _, p := range pids {
		if t, err := CPUTicks(p); err == nil {
			m.before[p] = t
		}
		if r, w, err := Syscalls(p); err == nil {
			m.io[p] = [2]int64{r, w}
		}
	}
	return m
}

// Stop returns the CPU the servers and this process spent since StartCPU.
func (m *CPUMeter) Stop() (server, client time.Duration) {
	var ticks int64
	for _, p := range m.pids {
		b, ok := m.before[p]
		if !ok {
			continue
		}
		if t, err := CPUTicks(p); err == nil {
			ticks += t - b
		}
	}
	return time.Duration(ticks) * time.Second / userHz, selfCPU() - m.self
}

// Fill sets res's CPU per operation and the servers' system calls per operation (res.Ops set).
func (m *CPUMeter) Fill(res *Result) {
	s, c := m.Stop()
	if res.Ops > 0 {
		res.ServerCPUus = float64(s.Microseconds()) / float64(res.Ops)
		res.ClientCPUus = float64(c.Microseconds()) / float64(res.Ops)
		if r, w, ok := m.Syscalls(); ok {
			if res.Extra == nil {
				res.Extra = map[string]float64{}
			}
			res.Extra["server_reads_per_op"] = float64(r) / float64(res.Ops)
			res.Extra["server_writes_per_op"] = float64(w) / float64(res.Ops)
		}
	}
}

// Syscalls is the server processes' read and write system calls since StartCPU (ok: all of
// them could be read both times; a process that was killed meanwhile cannot).
func (m *CPUMeter) Syscalls() (reads, writes int64, ok bool) {
	for _, p := range m.pids {
		b, found := m.io[p]
		if !found {
			return 0, 0, false
		}
		r, w, err := Syscalls(p)
		if err != nil {
			return 0, 0, false
		}
		reads += r - b[0]
		writes += w - b[1]
	}
	return reads, writes, len(m.pids) > 0
}
