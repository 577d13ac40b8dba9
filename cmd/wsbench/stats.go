package main

import "github.com/wsregistry/wsregistry/bench/benchkit"

// The result line, recorders and CPU meter are benchkit's, shared with bench/etcd so that
// both tools' lines compare field for field.
type (
	Result   = benchkit.Result
	recorder = benchkit.Recorder
	merged   = benchkit.Merged
	cpuMeter = benchkit.CPUMeter
)

var (
	startCPU = benchkit.StartCPU
	cpuTicks = benchkit.CPUTicks
	rssBytes = benchkit.RSSBytes
)
