package fsm

// SessionCounts returns how many live sessions (agent connections with registrations) each
// node owns, in one pass under the read lock: rebalancing and the dashboard compare members
// by it several times a second.
func (f *FSM) SessionCounts() map[string]int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]int, len(f.st.byNode))
	for node, set := range f.st.byNode {
		out[node] = len(set)
	}
	return out
}

// RegistrationsOf returns the registrations session s holds (nil when none): a node keeps a
// moving agent's old session until the same address holds each namespace under a new one.
func (f *FSM) RegistrationsOf(s SessionID) []Registration {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []Registration
	for _, ns := range f.st.sessions[s] {
		for _, r := range f.st.namespaces[ns] {
			if r.Session == s {
				out = append(out, r)
			}
		}
	}
	return out
}

// HeldElsewhere reports whether namespace ns has an instance at address addr under a session
// other than s: the agent of a moving session registered it again, through any node.
func (f *FSM) HeldElsewhere(ns, addr string, s SessionID) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, r := range f.st.namespaces[ns] {
		if r.Address == addr && r.Session != s {
			return true
		}
	}
	return false
}

func boolUvarint(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
