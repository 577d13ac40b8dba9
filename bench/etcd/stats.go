package main

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

// Result is one JSON line in the format of cmd/wsbench's Result (kept field for field, so
// `wsbench table` and `wsbench ratios` read these lines beside wsbench's own).
type Result struct {
	Time        string             `json:"time"`
	Run         string             `json:"run,omitempty"`
	Workload    string             `json:"workload"`
	Variant     string             `json:"variant,omitempty"`
	Pattern     string             `json:"pattern,omitempty"`
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

// recorder collects one worker's latencies (ns); merged at the end.
type recorder struct {
	lat     []int64
	errors  int64
	lastErr error
}

type merged struct {
	mu   sync.Mutex
	recs []*recorder
}

func (m *merged) add(r *recorder) {
	m.mu.Lock()
	m.recs = append(m.recs, r)
	m.mu.Unlock()
}

func (m *merged) fill(res *Result) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var all []int64
	for _, r := range m.recs {
		all = append(all, r.lat...)
		res.Errors += r.errors
		if r.lastErr != nil {
			res.Note = "last error: " + r.lastErr.Error()
		}
	}
	slices.Sort(all)
	res.Ops = int64(len(all))
	q := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		return float64(all[min(int(p*float64(len(all))), len(all)-1)]) / 1e3
	}
	res.P50us, res.P90us, res.P99us = q(0.50), q(0.90), q(0.99)
	if len(all) > 0 {
		res.Maxus = float64(all[len(all)-1]) / 1e3
	}
	if res.Seconds > 0 {
		res.OpsPerS = float64(res.Ops) / res.Seconds
	}
}

// cpuTicks is utime+stime of pid in clock ticks (USER_HZ, 100 on Linux), as wsbench reads it.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, nil
}

const userHz = 100

// syscalls is the read- and write-family system calls of pid (syscr, syscw of /proc/<pid>/io).
func syscalls(pid int) (reads, writes int64, err error) {
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

// cpuMeter measures the CPU of the etcd processes and of this process between start and fill,
// and the etcd processes' read and write system calls.
type cpuMeter struct {
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

func startCPU(pids []int) *cpuMeter {
	m := &cpuMeter{pids: pids, before: map[int]int64{}, io: map[int][2]int64{}, self: selfCPU()}
	for _, p := range pids {
		if t, err := cpuTicks(p); err == nil {
			m.before[p] = t
		}
		if r, w, err := syscalls(p); err == nil {
			m.io[p] = [2]int64{r, w}
		}
	}
	return m
}

func (m *cpuMeter) fill(res *Result) {
	var ticks, reads, writes int64
	for _, p := range m.pids {
		b, ok := m.before[p]
		if !ok {
			continue
		}
		if t, err := cpuTicks(p); err == nil {
			ticks += t - b
		}
		if r, w, err := syscalls(p); err == nil {
			reads += r - m.io[p][0]
			writes += w - m.io[p][1]
		}
	}
	server := time.Duration(ticks) * time.Second / userHz
	client := selfCPU() - m.self
	if res.Ops > 0 {
		res.ServerCPUus = float64(server.Microseconds()) / float64(res.Ops)
		res.ClientCPUus = float64(client.Microseconds()) / float64(res.Ops)
		if res.Extra == nil {
			res.Extra = map[string]float64{}
		}
		res.Extra["server_reads_per_op"] = float64(reads) / float64(res.Ops)
		res.Extra["server_writes_per_op"] = float64(writes) / float64(res.Ops)
	}
}
