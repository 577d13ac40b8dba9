// Package version is this build's version: set at link time by scripts/image.sh
// (-ldflags "-X github.com/wsregistry/wsregistry/internal/version.version=<git describe>"),
// otherwise read from the module and VCS information Go embeds in every build.
package version

import (
	"runtime"
	"runtime/debug"
)

// version is set by the linker; empty in a plain `go build` or `go test`.
var version string

// String is the build's version: the linker's value, else the main module's version
// (a `go install ...@v1.2.3`), else "devel" with the VCS revision Go recorded (+dirty).
func String() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return "devel"
	}
	return "devel-" + rev + dirty
}

// Revision is the VCS revision Go recorded ("" when none), for the build-info metric.
func Revision() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return ""
}

// GoVersion is the Go toolchain that built the binary.
func GoVersion() string { return runtime.Version() }
