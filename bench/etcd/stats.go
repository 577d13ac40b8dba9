package main

import "github.com/wsregistry/wsregistry/bench/benchkit"

// The result line, recorders and CPU meter are wsbench's (benchkit), so the lines written
// here compare field for field with wsbench's in `wsbench table` and `wsbench ratios`.
type (
	Result   = benchkit.Result
	recorder = benchkit.Recorder
	merged   = benchkit.Merged
)

var startCPU = benchkit.StartCPU
