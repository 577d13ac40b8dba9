// Package dashboard is the registry's live web page: plain HTML, CSS and JavaScript embedded
// in the binary (no build step, nothing loaded from elsewhere). The page reads GET /v1/cluster
// and follows GET /v1/watch, so it works on any node.
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the page at "/" and its files under "/assets/".
func Handler() http.Handler {
	files, err := fs.Sub(static, "static")
	if err != nil {
		panic("dashboard: embedded files missing: " + err.Error()) // a build problem, not a runtime one
	}
	assets := http.StripPrefix("/assets/", http.FileServerFS(files))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, files, "index.html")
	})
	mux.Handle("GET /assets/", assets)
	return secure(mux)
}

// secure forbids loading anything from another origin, so the page keeps working on an
// isolated network and cannot be made to leak the registry's state.
func secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache") // revalidate, so an upgraded node serves its own page
		next.ServeHTTP(w, r)
	})
}
