package fsm

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// model is a deliberately naive reimplementation of the semantics, the
// oracle for the randomized test.
type model struct {
	regs     map[string]Registration // ns + "\x00" + session
	nodes    map[string]NodeMeta
	purged   map[string]uint64
	tombs    []SessionID // oldest first
	rids     []string    // oldest first
	results  map[string]error
	maxRids  int
	maxTombs int
}

func newModel(maxRids, maxTombs int) *model {
	return &model{regs: map[string]Registration{}, nodes: map[string]NodeMeta{}, purged: map[string]uint64{},
		results: map[string]error{}, maxRids: maxRids, maxTombs: maxTombs}
}

func (m *model) apply(c Command) []error {
	if b, ok := c.(Batch); ok {
		out := make([]error, len(b.Commands))
		for i, c := range b.Commands {
			out[i] = m.one(c)
		}
		return out
	}
	return []error{m.one(c)}
}

func (m *model) one(c Command) error {
	rid := ""
	switch c := c.(type) {
	case Register:
		rid = c.RequestID
	case Deregister:
		rid = c.RequestID
	case PurgeNode:
		rid = c.RequestID
	case SetNode:
		rid = c.RequestID
	case RemoveNode:
		rid = c.RequestID
	case Unknown:
		return nil
	}
	if r, ok := m.results[rid]; ok && rid != "" {
		return r
	}
	var err error
	switch c := c.(type) {
	case Register:
		err = m.register(c.Reg)
	case Deregister:
		if c.Session.Node == "" {
			err = ErrInvalid
			break
		}
		if !slices.Contains(m.tombs, c.Session) {
			m.tombs = append(m.tombs, c.Session)
			if len(m.tombs) > m.maxTombs {
				m.tombs = m.tombs[1:]
			}
		}
		for k, r := range m.regs {
			if r.Session == c.Session {
				delete(m.regs, k)
			}
		}
	case PurgeNode:
		err = m.purge(c.Node, c.UpToIncarnation)
	case SetNode:
		old, ok := m.nodes[c.Meta.ID]
		switch {
		case c.Meta.ID == "", ok && c.Meta.Incarnation < old.Incarnation:
			err = ErrInvalid
		default:
			m.nodes[c.Meta.ID] = c.Meta
		}
	case RemoveNode:
		if err = m.purge(c.Node, 0); err == nil {
			delete(m.nodes, c.Node)
		}
	}
	if rid != "" {
		m.rids = append(m.rids, rid)
		m.results[rid] = err
		if len(m.rids) > m.maxRids {
			delete(m.results, m.rids[0])
			m.rids = m.rids[1:]
		}
	}
	return err
}

func (m *model) register(r Registration) error {
	if r.Validate() != nil {
		return ErrInvalid
	}
	if mark, ok := m.purged[r.Session.Node]; ok && r.Session.Incarnation <= mark {
		return ErrSessionClosed
	}
	if slices.Contains(m.tombs, r.Session) {
		return ErrSessionClosed
	}
	k := r.Namespace + "\x00" + r.Session.String()
	if _, ok := m.regs[k]; !ok {
		m.regs[k] = r
	}
	return nil
}

func (m *model) purge(node string, upTo uint64) error {
	if node == "" {
		return ErrInvalid
	}
	if upTo == 0 {
		meta, seen := m.nodes[node]
		upTo = meta.Incarnation
		for _, r := range m.regs {
			if r.Session.Node == node {
				seen = true
				upTo = max(upTo, r.Session.Incarnation)
			}
		}
		if !seen {
			return nil
		}
	}
	for k, r := range m.regs {
		if r.Session.Node == node && r.Session.Incarnation <= upTo {
			delete(m.regs, k)
		}
	}
	if cur, ok := m.purged[node]; !ok || upTo > cur {
		m.purged[node] = upTo
	}
	return nil
}

// compare checks every read of f against the model.
func (m *model) compare(t *testing.T, f *FSM) {
	t.Helper()
	var regs []Registration
	for _, r := range m.regs {
		regs = append(regs, r)
	}
	slices.SortFunc(regs, func(a, b Registration) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return compareInstance(a, b)
	})
	var want []NamespaceView
	for _, r := range regs {
		if n := len(want); n == 0 || want[n-1].Name != r.Namespace {
			want = append(want, NamespaceView{Name: r.Namespace})
		}
		want[len(want)-1].Instances = append(want[len(want)-1].Instances, r)
	}
	if got := f.Namespaces(); !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Fatalf("Namespaces =\n%v\nmodel\n%v", got, want)
	}
	d := dump(f)
	var nodes []NodeMeta
	for _, n := range m.nodes {
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b NodeMeta) int { return strings.Compare(a.ID, b.ID) })
	if !reflect.DeepEqual(d.Nodes, nodes) && len(d.Nodes)+len(nodes) > 0 {
		t.Fatalf("nodes %v, model %v", d.Nodes, nodes)
	}
	if !reflect.DeepEqual(d.Purged, m.purged) {
		t.Fatalf("purged %v, model %v", d.Purged, m.purged)
	}
	if !slices.Equal(d.Tombstones, m.tombs) {
		t.Fatalf("tombstones %v, model %v", d.Tombstones, m.tombs)
	}
	var rids []string
	for _, e := range d.Requests {
		rids = append(rids, e.ID)
		if got, want := e.result.err(), m.results[e.ID]; !sameClass(got, want) {
			t.Fatalf("remembered result for %q = %v, model %v", e.ID, got, want)
		}
	}
	if !slices.Equal(rids, m.rids) {
		t.Fatalf("request ids %v, model %v", rids, m.rids)
	}
}

func sameClass(a, b error) bool {
	switch {
	case a == nil || b == nil:
		return a == nil && b == nil
	case errors.Is(b, ErrInvalid):
		return errors.Is(a, ErrInvalid)
	default:
		return errors.Is(a, ErrSessionClosed) && errors.Is(b, ErrSessionClosed)
	}
}

type gen struct {
	r     *rand.Rand
	rids  int
	epoch uint64 // nodes restart with newer incarnations as the run goes on
}

func (g *gen) session() SessionID {
	return sid([]string{"a", "b", "c"}[g.r.IntN(3)], g.epoch+uint64(1+g.r.IntN(3)), uint64(g.r.IntN(4)))
}

func (g *gen) rid() string {
	switch x := g.r.IntN(20); {
	case x < 8:
		return ""
	case x < 11 && g.rids > 0:
		// A retry of something recent: within the dedup window (16 ids, so
		// the last 8 are always still remembered when a batch of up to 5
		// arrives). Older retries are not promised to be deduplicated.
		return fmt.Sprintf("r%d", g.rids-1-g.r.IntN(min(g.rids, 8)))
	default:
		g.rids++
		return fmt.Sprintf("r%d", g.rids-1)
	}
}

func (g *gen) command(inBatch bool) Command {
	switch x := g.r.IntN(100); {
	case x < 50:
		r := reg([]string{"x", "y", "z", "w"}[g.r.IntN(4)], fmt.Sprintf("10.0.0.%d:80", g.r.IntN(3)), g.session(), int64(g.r.IntN(5)))
		if g.r.IntN(15) == 0 {
			r.Address = "no-port"
		}
		return Register{RequestID: g.rid(), Reg: r}
	case x < 62:
		return Deregister{RequestID: g.rid(), Session: g.session()}
	case x < 65:
		s := g.session()
		return PurgeNode{RequestID: g.rid(), Node: s.Node, UpToIncarnation: uint64(g.r.IntN(2)) * s.Incarnation}
	case x < 75:
		s := g.session()
		return SetNode{RequestID: g.rid(), Meta: NodeMeta{ID: s.Node, WSAddr: fmt.Sprintf("%s:%d", s.Node, g.r.IntN(2)+1), Incarnation: s.Incarnation}}
	case x < 76:
		return RemoveNode{RequestID: g.rid(), Node: g.session().Node}
	case x < 79:
		return Unknown{T: IgnoreIfUnknown | CommandType(1+g.r.IntN(100)), Body: []byte(`{}`)}
	case inBatch:
		return g.command(true)
	default:
		n := g.r.IntN(6)
		cmds := make([]Command, n)
		for i := range cmds {
			cmds[i] = g.command(true)
		}
		return Batch{Commands: cmds}
	}
}

// retrySafe: a single command (idempotent even without a request id), or a
// batch whose commands all carry request ids.
func retrySafe(c Command) bool {
	b, ok := c.(Batch)
	if !ok {
		return true // a single command's retry gives the same result with or without an id
	}
	for _, c := range b.Commands {
		if reflect.ValueOf(c).FieldByName("RequestID").String() == "" {
			if _, unk := c.(Unknown); !unk {
				return false
			}
		}
	}
	return true
}

func TestRandom_MatchesModelSurvivesSnapshotAndRetries(t *testing.T) {
	const maxRids, maxTombs = 16, 8 // small, to exercise eviction; > batch size
	for seed := range uint64(4) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			g := &gen{r: rand.New(rand.NewPCG(seed, 42))}
			a := &applier{t: t, f: newFSM(maxRids, maxTombs)}
			m := newModel(maxRids, maxTombs)
			retried := 0
			peak := 0
			for step := range 1500 {
				g.epoch = uint64(step / 60)
				cmd := g.command(false)
				data := mustEncode(t, cmd)
				got := a.raw(data)
				want := m.apply(cmd)
				if len(got) != len(want) {
					t.Fatalf("step %d %#v: %d results, model %d", step, cmd, len(got), len(want))
				}
				for i := range got {
					if !sameClass(got[i], want[i]) {
						t.Fatalf("step %d %#v: result %d = %v, model %v", step, cmd, i, got[i], want[i])
					}
				}
				checkInvariants(t, a.f)
				m.compare(t, a.f)
				peak = max(peak, a.f.Stats().Registrations)

				// Snapshot and restore into a fresh FSM: same state.
				r := roundTrip(t, a.f)
				if want, got := dump(a.f), dump(r); !reflect.DeepEqual(want, got) {
					t.Fatalf("step %d: restored state differs", step)
				}
				if r.Stats() != a.f.Stats() || r.AppliedIndex() != a.f.AppliedIndex() ||
					!reflect.DeepEqual(r.Namespaces(), a.f.Namespaces()) || !reflect.DeepEqual(r.Nodes(), a.f.Nodes()) {
					t.Fatalf("step %d: restored reads differ", step)
				}
				checkInvariants(t, r)

				// The same entry again (a retried forward) changes nothing and
				// answers the same. A batch is retry-safe only when each of its
				// commands carries a request id: [RemoveNode n, SetNode n] run
				// twice is not a no-op, which is why forwarded commands carry ids.
				before := dumpNoIndex(a.f)
				again := a.raw(data)
				m.apply(cmd)
				if !retrySafe(cmd) {
					continue
				}
				if after := dumpNoIndex(a.f); !reflect.DeepEqual(before, after) {
					t.Fatalf("step %d: re-applying %#v changed the state", step, cmd)
				}
				if !reflect.DeepEqual(errStrings(got), errStrings(again)) {
					t.Fatalf("step %d: re-applying %#v gave %v, first %v", step, cmd, again, got)
				}
				retried++
			}
			st := a.f.Stats()
			t.Logf("final: %+v, %d request ids, %d tombstones; %d retries checked, peak %d registrations", st, len(dump(a.f).Requests), len(dump(a.f).Tombstones), retried, peak)
			if retried < 1000 {
				t.Fatalf("only %d retries checked", retried)
			}
		})
	}
}
