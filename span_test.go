package main

import (
	"crypto/sha256"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// spanScript drives a spanRouter from testdata/span/*.txt. uuids are
// written as short names and printed back as them.
type spanScript struct {
	r     *spanRouter
	names map[UUID]string
}

func (s *spanScript) uuid(name string) UUID {
	if name == "" || name == "nil" {
		return UUID{}
	}
	h := sha256.Sum256([]byte(name))
	var u UUID
	copy(u[:], h[:])
	s.names[u] = name
	return u
}

func (s *spanScript) name(u UUID) string {
	if u.IsNil() {
		return "nil"
	}
	if n, ok := s.names[u]; ok {
		return n
	}
	return u.String()
}

func argOr(td *datadriven.TestData, key, def string) string {
	if a, ok := td.Arg(key); ok && len(a.Vals) > 0 {
		return a.Vals[0]
	}
	return def
}

func argU(t *testing.T, td *datadriven.TestData, key string, def uint64) uint64 {
	v := argOr(td, key, "")
	if v == "" {
		return def
	}
	if v == "all" {
		return ^uint64(0)
	}
	n, err := strconv.ParseUint(v, 0, 64)
	if err != nil {
		td.Fatalf(t, "%s=%s: %v", key, v, err)
	}
	return n
}

func (s *spanScript) run(t *testing.T, td *datadriven.TestData) string {
	switch td.Cmd {
	case "router":
		s.r = newSpanRouter(uint32(argU(t, td, "salt", 100)))
		return "ok"
	case "tree":
		return s.tree()
	case "batch":
		// One event a line, in one batch: the actions of all of them.
		s.r.begin()
		for _, line := range strings.Split(strings.TrimSpace(td.Input), "\n") {
			f := strings.Fields(line)
			ev := &datadriven.TestData{Pos: td.Pos, Cmd: f[0]}
			for _, kv := range f[1:] {
				k, v, _ := strings.Cut(kv, "=")
				ev.CmdArgs = append(ev.CmdArgs, datadriven.CmdArg{Key: k, Vals: []string{v}})
			}
			s.event(t, ev)
		}
	default:
		s.event(t, td)
	}
	return s.actions()
}

// event applies one event to the router.
func (s *spanScript) event(t *testing.T, td *datadriven.TestData) {
	switch td.Cmd {
	case "conn":
		f := LnkConn{PeerMask: argU(t, td, "peer_mask", ^uint64(0)), PeerType: uint8(argU(t, td, "peer_type", PeerCluster)),
			PeerID: s.uuid(argOr(td, "peer_id", ""))}
		s.r.connUp(connID(argU(t, td, "id", 0)), f)
	case "conn-down":
		s.r.connDown(connID(argU(t, td, "id", 0)))
	case "link-down":
		s.r.linkDown(connID(argU(t, td, "id", 0)))
	case "span":
		sp := &LnkSpan{PeerID: s.uuid(argOr(td, "clid", "c1")), PfsID: s.uuid(argOr(td, "fsid", "f1")),
			PfsType: uint8(argU(t, td, "type", PFSMaster)), PeerType: uint8(argU(t, td, "peer_type", PeerHammer2)),
			ProtoVersion: 1, Dist: uint32(argU(t, td, "dist", 0)), RNSS: uint32(argU(t, td, "rnss", 0))}
		sp.SetLabels(argOr(td, "label", "pfs"), argOr(td, "pfs_label", ""))
		s.r.spanUp(connID(argU(t, td, "conn", 0)), spanID(argU(t, td, "id", 0)), sp, sp.Dist, sp.RNSS)
	case "span-down":
		s.r.spanDown(spanID(argU(t, td, "id", 0)))
	case "relay-closed":
		s.r.relayClosed(relayID(argU(t, td, "id", 0)))
	default:
		td.Fatalf(t, "unknown command %s", td.Cmd)
	}
}

func (s *spanScript) actions() string {
	var b strings.Builder
	for _, a := range s.r.take() {
		if a.Ack {
			fmt.Fprintf(&b, "answer span=%d conn=%d\n", a.Acked, a.Conn)
			continue
		}
		if a.Open {
			fmt.Fprintf(&b, "open relay=%d conn=%d %s/%s dist=%d rnss=%d\n", a.Relay, a.Conn,
				a.Span.PeerLabelString(), s.name(a.Span.PfsID), a.Dist, a.RNSS)
		} else {
			fmt.Fprintf(&b, "close relay=%d conn=%d\n", a.Relay, a.Conn)
		}
	}
	if b.Len() == 0 {
		return "no actions"
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// tree prints the state as DragonFly's shell `tree` does, sorted.
func (s *spanScript) tree() string {
	var b strings.Builder
	s.r.Walk(func(n NodeView) {
		state := ""
		if n.Active {
			state = fmt.Sprintf(" active, awaiting %d answers", n.Waiting)
		}
		fmt.Fprintf(&b, "cluster %d %s (%s) node %s (%s)%s\n", n.PeerType, s.name(n.PeerID),
			n.PeerLabel, s.name(n.PfsID), n.PfsLabel, state)
		for _, l := range n.Links {
			fmt.Fprintf(&b, "  link span=%d dist=%d rnss=%d via conn=%d\n", l.Span, l.Dist, l.RNSS, l.Conn)
		}
		for _, rl := range n.Relays {
			fmt.Fprintf(&b, "  relay=%d of span=%d to conn=%d\n", rl.Relay, rl.Span, rl.Conn)
		}
	})
	if b.Len() == 0 {
		return "empty"
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func TestSpanRouterScripts(t *testing.T) {
	t.Parallel()
	datadriven.Walk(t, "testdata/span", func(t *testing.T, path string) {
		s := &spanScript{r: newSpanRouter(100), names: map[UUID]string{}}
		datadriven.RunTest(t, path, s.run)
	})
}
