package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var updateStatus = flag.Bool("update-status", false, "rewrite testdata/status/*.json from the current code")

// goldenTime is a fixed instant for the golden documents.
var goldenTime = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

// goldenLeafDoc is a document of every part of the leaf schema: a leaf
// with a kernel, a backbone, a REMOTE target up and one in backoff, an
// inbound link, a span, a quorum group and a limit hit; and a PFS whose
// leaf is not running.
func goldenLeafDoc() leafStatusDoc {
	uuid := func(b byte) UUID { var u UUID; u[0], u[15] = b, b; return u }
	t := func(sec int) time.Time { return goldenTime.Add(time.Duration(sec) * time.Second) }
	uid, pid := 0, 4242
	next := t(30)
	st := &LeafStatus{Label: "pfs-a", Clid: uuid(1), Fsid: uuid(2), Type: "MASTER", Pid: 4242, Started: t(-3600),
		Listen: "127.0.0.1:9000", NodeKey: "SHA256:node",
		Kernel: LinkStatus{State: DialUp, Class: "local-privileged", PeerUID: &uid, PeerPID: &pid, Since: t(-3590),
			BytesIn: 1000, BytesOut: 2000},
		Backbone: &LinkStatus{Target: "auto (unix:/var/run/hammer2/service.sock)", State: DialUp, Class: "local-privileged",
			PeerUID: &uid, Since: t(-3500), BytesIn: 300, BytesOut: 400},
		Remotes: []LinkStatus{
			{Target: "192.0.2.1:987", Slots: []int{1}, State: DialUp, Class: "node", Since: t(-60), RTTMs: 0.412,
				PeerName: "b", PeerKey: "SHA256:b", Transport: "quic", BytesIn: 5, BytesOut: 6},
			{Target: "tcp:192.0.2.2:987", Slots: []int{2, 3}, FromConfig: true, State: DialBackoff, Since: t(-5),
				NextTry: &next, LastErr: "connection refused"},
		},
		Inbound: []LinkStatus{{Target: "192.0.2.3:40000", State: DialUp, Class: "node", Since: t(-10), RTTMs: 1.5,
			PeerName: "c", PeerKey: "SHA256:c", Transport: "quic"}},
		Spans: []SpanStatus{{Label: "pfs-b", PeerID: uuid(1), PfsID: uuid(3), PfsType: "MASTER", PeerType: PeerHammer2,
			Dist: 1, Via: "192.0.2.1:987"}},
		Quorum: &QuorumJSON{ID: "a1", Members: []string{"a1", "b2", "c3"}, Learners: []string{}, Leader: "b2", Term: 7,
			State: "follower", LastTxid: 99, HasQuorum: true,
			Locks: []LockJSON{{Mode: "EXCLUSIVE", Domain: "INUM", Lo: 1, Hi: 1, Txid: 98}}},
		KernelStates: []LockJSON{{Mode: "SHARED", Domain: "INUM", Lo: 5, Hi: 9, Txid: 97, Holder: "kernel"}},
		LimitHits:    []LimitHitStatus{{Limit: "spans_per_link", Count: 2, Last: t(-20)}},
	}
	slots := []Volconf{{CopyID: 1, Path: "span:192.0.2.1", Label: "b", Priority: 1, PfsClid: uuid(1), RemotePfsType: PFSMaster}}
	running := statusJSON{Path: "/pfs/a", Slots: slotStatuses(slots), Leaf: st, Running: true, Health: leafHealth(st, goldenTime)}
	stopped := statusJSON{Path: "/pfs/b", Slots: slotStatuses(nil), Health: leafHealth(nil, goldenTime),
		Error: "no leaf is running for this PFS (no control socket at /pfs/b/leaf.sock)"}
	return leafStatusDoc{SchemaVersion: statusSchemaVersion, PFS: []statusJSON{running, stopped}}
}

func goldenServiceDoc() serviceStatusDoc {
	uuid := func(b byte) UUID { var u UUID; u[0], u[15] = b, b; return u }
	t := func(sec int) time.Time { return goldenTime.Add(time.Duration(sec) * time.Second) }
	uid, pid := 0, 77
	next := t(3)
	st := &ServiceStatus{Pid: 77, Started: t(-7200), TCP: ":987", Unix: "/var/run/hammer2/service.sock", Listen: "none",
		Links: []ServiceLinkStatus{
			{Name: "kernel #1", Since: t(-7100), Class: "local-privileged", PeerUID: &uid, PeerPID: &pid, Transport: "unix",
				Label: "host/hammer2-mount", Kernel: true, Spans: 1, BytesIn: 10, BytesOut: 20},
			{Name: "tcp 192.0.2.9:1234 #2", Since: t(-50), Class: "node", PeerKey: "SHA256:rsa", Transport: "tcp+rsa",
				Spans: 2, Relays: 1, Circuits: 1, BytesIn: 30, BytesOut: 40},
		},
		Autoconn: []LinkStatus{{Target: "192.0.2.10:987", State: DialBackoff, Since: t(-1), NextTry: &next, LastErr: "refused"}},
		Volconf: []ServiceVolconfStatus{{Kernel: "kernel #1", MediaID: uuid(4), Slot: 1, Path: "span:192.0.2.9",
			Link: LinkStatus{Target: "192.0.2.9:987", State: DialUp, Since: t(-50), Transport: "tcp+rsa"}}},
		RemoteDir: "/etc/hammer2/remote", RSAKey: "SHA256:ours", Spans: 3, Relays: 1,
		Nodes: []ServiceNodeStatus{{PeerType: PeerHammer2, PeerID: uuid(1), PeerLabel: "pfs-a", PfsType: "MASTER",
			PfsID: uuid(2), PfsLabel: "pfs-a", Links: []ServiceNodeLink{{Span: 1, Dist: 0, Via: "kernel #1"}},
			Relays: []ServiceNodeRelay{{Relay: 2, Via: "tcp 192.0.2.9:1234 #2"}}}},
		LimitHits: []LimitHitStatus{},
	}
	return serviceStatusDoc{SchemaVersion: statusSchemaVersion, Health: serviceHealth(st, goldenTime), Service: st}
}

// TestStatusGolden pins the status --json schema (docs/STATUS.md): a
// change to the documents shows here as a diff of the golden files, which
// -update-status rewrites (and docs/STATUS.md must then say so).
func TestStatusGolden(t *testing.T) {
	for _, tc := range []struct {
		file string
		doc  any
	}{{"leaf.json", goldenLeafDoc()}, {"service.json", goldenServiceDoc()}} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := json.MarshalIndent(tc.doc, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			path := filepath.Join("testdata", "status", tc.file)
			if *updateStatus {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (make it with go test -run TestStatusGolden -update-status)", err)
			}
			if string(got) != string(want) {
				t.Errorf("%s changed (rewrite with -update-status if meant, and update docs/STATUS.md):\n%s", path, lineDiff(string(want), string(got)))
			}
			// docs/STATUS.md shows this very document.
			if doc, err := os.ReadFile(filepath.Join("docs", "STATUS.md")); err != nil || !strings.Contains(string(doc), string(got)) {
				t.Errorf("docs/STATUS.md does not show %s as it is now (%v)", path, err)
			}
			// The rules of the schema, whatever the document: no Go field
			// names, no null lists, no zero times, no duration strings.
			checkSchemaRules(t, got)
		})
	}
}

// lineDiff is the first lines where want and got differ, for a failure.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)) && b.Len() < 2000; i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("- " + wl + "\n+ " + gl + "\n")
		}
	}
	return b.String()
}

// checkSchemaRules walks a document: every key is snake_case, no value is
// null, no time is the zero time, no string is a Go duration.
func checkSchemaRules(t *testing.T, doc []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatal(err)
	}
	if m, ok := v.(map[string]any); !ok || m["schema_version"] != float64(statusSchemaVersion) {
		t.Errorf("no top-level schema_version %d", statusSchemaVersion)
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch x := v.(type) {
		case nil:
			t.Errorf("%s is null", path)
		case map[string]any:
			for k, e := range x {
				if k != strings.ToLower(k) || strings.ContainsAny(k, " -") {
					t.Errorf("%s.%s: not a snake_case key", path, k)
				}
				walk(path+"."+k, e)
			}
		case []any:
			for i, e := range x {
				walk(fmt.Sprintf("%s[%d]", path, i), e)
			}
		case string:
			if strings.HasPrefix(x, "0001-01-01") {
				t.Errorf("%s is the zero time", path)
			}
			if _, err := time.ParseDuration(x); err == nil && x != "0" {
				t.Errorf("%s = %q: a duration string (give a number with the unit in the key)", path, x)
			}
		}
	}
	walk("", v)
}

// TestHealth: the rules of status --check, each reason on its own.
func TestHealth(t *testing.T) {
	now := goldenTime
	up := func() *LeafStatus {
		return &LeafStatus{Kernel: LinkStatus{State: DialUp}, Remotes: []LinkStatus{{Target: "x", Slots: []int{1}, State: DialUp}},
			Quorum: &QuorumJSON{HasQuorum: true}}
	}
	for _, tc := range []struct {
		name   string
		change func(*LeafStatus) *LeafStatus
		state  string
		reason string
	}{
		{"healthy", func(s *LeafStatus) *LeafStatus { return s }, HealthOK, ""},
		{"not running", func(*LeafStatus) *LeafStatus { return nil }, HealthNotRunning, "leaf not running"},
		{"kernel", func(s *LeafStatus) *LeafStatus { s.Kernel.State = "waiting"; return s }, HealthDegraded, "kernel not connected (waiting)"},
		{"remote down", func(s *LeafStatus) *LeafStatus {
			s.Remotes[0].State, s.Remotes[0].LastErr = DialBackoff, "refused"
			return s
		}, HealthDegraded, "REMOTE slot 1 x down: backoff: refused"},
		{"inbound down is no reason", func(s *LeafStatus) *LeafStatus {
			s.Inbound = []LinkStatus{{State: DialConnecting}}
			return s
		}, HealthOK, ""},
		{"config target", func(s *LeafStatus) *LeafStatus {
			s.Remotes = append(s.Remotes, LinkStatus{Target: "y", FromConfig: true, State: DialDialing})
			return s
		}, HealthDegraded, "config target y down: dialing"},
		{"backbone", func(s *LeafStatus) *LeafStatus { s.Backbone = &LinkStatus{Target: "b", State: DialBackoff}; return s },
			HealthDegraded, "backbone b down: backoff"},
		{"no quorum", func(s *LeafStatus) *LeafStatus { s.Quorum.HasQuorum = false; return s }, HealthDegraded, "no quorum"},
		{"recent limit", func(s *LeafStatus) *LeafStatus {
			s.LimitHits = []LimitHitStatus{{Limit: "spans", Count: 1, Last: now.Add(-time.Minute)}}
			return s
		}, HealthDegraded, "limit spans hit 1 times, last 1m0s ago"},
		{"old limit", func(s *LeafStatus) *LeafStatus {
			s.LimitHits = []LimitHitStatus{{Limit: "spans", Count: 1, Last: now.Add(-healthLimitWindow)}}
			return s
		}, HealthOK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := leafHealth(tc.change(up()), now)
			if h.State != tc.state {
				t.Fatalf("state %s, want %s: %q", h.State, tc.state, h.Reasons)
			}
			if tc.reason == "" && len(h.Reasons) != 0 || tc.reason != "" && (len(h.Reasons) != 1 || !strings.HasPrefix(h.Reasons[0], tc.reason)) {
				t.Fatalf("reasons %q, want one starting %q", h.Reasons, tc.reason)
			}
		})
	}
	if h := serviceHealth(&ServiceStatus{Autoconn: []LinkStatus{{Target: "n", State: DialBackoff}}}, now); h.checkCode() != 1 ||
		h.Reasons[0] != "autoconn target n down: backoff" {
		t.Errorf("service with a target down: %+v", h)
	}
	if h := serviceHealth(&ServiceStatus{}, now); h.checkCode() != 0 {
		t.Errorf("idle service: %+v", h)
	}
	if h := serviceHealth(nil, now); h.checkCode() != 2 {
		t.Errorf("no service: %+v", h)
	}
}
