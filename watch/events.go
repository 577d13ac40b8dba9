package watch

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/wsregistry/wsregistry/fsm"
)

// Event names (the SSE "event:" field).
const (
	EventState   = "state"
	EventChanges = "changes"
	EventCluster = "cluster"
)

// Change is one effect of a raft entry, as the stream shows it.
type Change struct {
	Index     uint64        `json:"index"`
	Kind      string        `json:"kind"` // register, deregister, node, node-removed
	Namespace string        `json:"ns,omitempty"`
	Host      string        `json:"host,omitempty"`
	Node      string        `json:"node,omitempty"`
	Session   string        `json:"session,omitempty"`
	Since     *time.Time    `json:"since,omitempty"`
	Meta      *fsm.NodeMeta `json:"meta,omitempty"`
}

// Instance is one registration in a state event and in GET /v1/namespaces.
type Instance struct {
	Host    string    `json:"host"`
	Node    string    `json:"node"`
	Session string    `json:"session"`
	Since   time.Time `json:"since"`
}

// Namespace is one namespace in a state event.
type Namespace struct {
	Name      string     `json:"name"`
	Instances []Instance `json:"instances"`
}

// NamespaceOf is the view of a namespace's registrations, in state events and in the
// registry's HTTP API alike.
func NamespaceOf(name string, regs []fsm.Registration) Namespace {
	out := Namespace{Name: name, Instances: make([]Instance, 0, len(regs))}
	for _, r := range regs {
		out.Instances = append(out.Instances, Instance{
			Host: r.Address, Node: r.Session.Node, Session: r.Session.String(), Since: time.UnixMilli(r.Since).UTC(),
		})
	}
	return out
}

// StateEvent is the data of a "state" event: everything, as of Index.
type StateEvent struct {
	Index      uint64          `json:"index"`
	Namespaces []Namespace     `json:"namespaces"`
	Nodes      []fsm.NodeMeta  `json:"nodes"`
	Cluster    json.RawMessage `json:"cluster,omitempty"`
}

// ChangesEvent is the data of a "changes" event: what entries up to Index changed, in order.
type ChangesEvent struct {
	Index   uint64   `json:"index"`
	Changes []Change `json:"changes"`
}

// ClusterEvent is the data of a "cluster" event: the members as the serving node sees them,
// sent when they change. Index is the last index sent before it.
type ClusterEvent struct {
	Index   uint64          `json:"index"`
	Cluster json.RawMessage `json:"cluster"`
}

func (h *Hub) encodeChanges(index uint64, changes []Change) *frame {
	return h.encode(EventChanges, true, index, ChangesEvent{Index: index, Changes: changes})
}

func (h *Hub) encodeCluster(index uint64) *frame {
	// No SSE id: a cluster event must not move a client's resume point (Last-Event-ID).
	return h.encode(EventCluster, false, index, ClusterEvent{Index: index, Cluster: h.clusterJSON})
}

func (h *Hub) encodeState(index uint64, ns []fsm.NamespaceView, nodes []fsm.NodeMeta, cluster []byte) *frame {
	ev := StateEvent{Index: index, Namespaces: make([]Namespace, 0, len(ns)), Nodes: nodes, Cluster: cluster}
	if ev.Nodes == nil {
		ev.Nodes = []fsm.NodeMeta{}
	}
	for _, v := range ns {
		ev.Namespaces = append(ev.Namespaces, NamespaceOf(v.Name, v.Instances))
	}
	h.stateFrames.Add(1)
	return h.encode(EventState, true, index, ev)
}

// encode renders one SSE event. encoding/json never emits a raw newline, so the data is one
// "data:" line.
func (h *Hub) encode(event string, withID bool, index uint64, v any) *frame {
	h.frames.Add(1)
	var buf bytes.Buffer
	if withID {
		buf.WriteString("id: ")
		buf.WriteString(strconv.FormatUint(index, 10))
		buf.WriteByte('\n')
	}
	buf.WriteString("event: ")
	buf.WriteString(event)
	buf.WriteString("\ndata: ")
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Every value here is built from plain strings and numbers.
		panic(fmt.Sprintf("watch: encode %s event: %v", event, err))
	}
	buf.WriteByte('\n') // Encode ended the data line; a blank line ends the event
	return &frame{data: buf.Bytes()}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("watch: encode cluster view: %v", err))
	}
	return b
}
