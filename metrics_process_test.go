//go:build !dragonfly

package main

// Operating the daemons as a monitor does: `hammer2 status --check` of a
// leaf and of a service in each of its exit codes, and their Prometheus
// metrics scraped from the running processes, over metrics_listen and
// `hammer2 metrics`.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// checkLines runs `status --check` with args and returns its exit code and
// its lines.
func checkLines(t *testing.T, bin string, args ...string) (int, []string) {
	t.Helper()
	out, errOut, code := runH2(t, bin, append(args, "--check")...)
	if errOut != "" {
		t.Errorf("%v --check wrote to stderr: %s", args, errOut)
	}
	var lines []string
	for l := range strings.Lines(out) {
		lines = append(lines, strings.TrimSpace(l))
	}
	return code, lines
}

func hasLine(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// TestProcessStatusCheck: each exit code of `status --check`, for a leaf
// and for a service, from the real daemons: 2 before they run, 1 with a
// named reason for each fault (kernel not connected, a REMOTE target
// down, no quorum, an autoconn target down, a limit hit), 0 once every
// link is up.
func TestProcessStatusCheck(t *testing.T) {
	t.Parallel()
	svc := newSvcNode(t, "s", daemonOpts{})
	a, b := newLeafNode(t, "a", daemonOpts{}), newLeafNode(t, "b", daemonOpts{})
	a.trust(b)
	b.trust(a)
	leafCheck := func() (int, []string) { t.Helper(); return checkLines(t, a.bin, "-c", a.cfgPath, "status", a.pfs) }
	svcCheck := func(s *svcNode) (int, []string) {
		t.Helper()
		return checkLines(t, s.bin, "-c", s.cfgPath, "status", "--service", "--unix", s.sock)
	}

	if code, lines := leafCheck(); code != 2 || !hasLine(lines, "leaf not running") {
		t.Fatalf("no leaf: exit %d %q, want 2 and \"leaf not running\"", code, lines)
	}
	if code, lines := svcCheck(svc); code != 2 || !hasLine(lines, "service not running") {
		t.Fatalf("no service: exit %d %q, want 2 and \"service not running\"", code, lines)
	}

	svc.start()
	if code, lines := svcCheck(svc); code != 0 || len(lines) != 0 {
		t.Fatalf("a service with nothing to dial: exit %d %q, want 0 and no output", code, lines)
	}
	// The leaf on the service, with a REMOTE slot naming b, which is down,
	// and no kernel yet.
	startLeafOn(a, svc)
	if _, errOut, code := a.h2("-s", a.pfs, "connect", "span:"+b.addr); code != 0 {
		t.Fatalf("connect: exit %d: %s", code, errOut)
	}
	code, lines := leafCheck()
	if code != 1 || !hasLine(lines, "kernel not connected") || !hasLine(lines, "REMOTE slot 1 "+b.addr+" down") || len(lines) != 2 {
		t.Fatalf("leaf without kernel, b down: exit %d %q, want 1 with the kernel and slot 1", code, lines)
	}
	// The JSON says the same, in the schema's rules.
	out, _, _ := a.h2("status", "--json", a.pfs)
	checkSchemaRules(t, []byte(out))
	if st := a.status(); st.Health.State != HealthDegraded || len(st.Health.Reasons) != 2 {
		t.Errorf("status --json health: %+v", st.Health)
	}

	// The kernel connects and b starts: healthy.
	if _, err := qpDialKernel(t, "ka", a, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	b.start()
	a.waitStatus(15*time.Second, "kernel, backbone and b up", func(s procStatus) bool {
		return s.Leaf != nil && s.Leaf.Kernel.State == DialUp && s.remoteUp(b.addr) &&
			s.Leaf.Backbone != nil && s.Leaf.Backbone.State == DialUp
	})
	if code, lines := leafCheck(); code != 0 || len(lines) != 0 {
		t.Fatalf("healthy leaf: exit %d %q, want 0 and no output", code, lines)
	}
	out, _, _ = a.h2("status", "--json", a.pfs)
	checkSchemaRules(t, []byte(out))

	// b goes away: degraded again, naming it.
	b.signal(syscall.SIGTERM)
	if _, ok := b.waitExit(10 * time.Second); !ok {
		t.Fatal("b did not stop")
	}
	a.waitStatus(15*time.Second, "the link to b down", func(s procStatus) bool { return !s.remoteUp(b.addr) })
	if code, lines := leafCheck(); code != 1 || !hasLine(lines, "REMOTE slot 1 "+b.addr+" down") {
		t.Fatalf("b stopped: exit %d %q, want 1 naming slot 1", code, lines)
	}

	// A master of a two-master group whose other master never comes: no
	// quorum.
	m := newLeafNode(t, "m", daemonOpts{})
	m.writeConfig(fmt.Sprintf("\n[quorum]\nmasters = [%q, %q]\ntick = \"100ms\"\n", m.info.Fsid, NewUUID()))
	m.startArgs("no quorum", "-d", "leaf", "--listen", "none", "--backbone", "unix:"+svc.sock, m.pfs)
	if _, err := qpDialKernel(t, "km", m, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	m.waitStatus(10*time.Second, "kernel and backbone up", func(s procStatus) bool {
		return s.Leaf != nil && s.Leaf.Kernel.State == DialUp && s.Leaf.Backbone != nil && s.Leaf.Backbone.State == DialUp
	})
	code, lines = checkLines(t, m.bin, "-c", m.cfgPath, "status", m.pfs)
	if code != 1 || len(lines) != 1 || !hasLine(lines, "no quorum: master ") {
		t.Fatalf("a master without its majority: exit %d %q, want 1 and \"no quorum\"", code, lines)
	}

	// A service whose autoconn target is down, and that closed a link
	// over a limit (a TCP peer that never said hello).
	s2 := newSvcNode(t, "s2", daemonOpts{})
	appendFile(t, s2.cfgPath, "[limits]\nhello_timeout = \"300ms\"\n")
	s2.autoconn = []string{"127.0.0.1:1"}
	s2.start()
	mark := s2.logMark()
	c, err := net.Dial("tcp", s2.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s2.waitLogSince(mark, 10*time.Second, "over a limit")
	code, lines = svcCheck(s2)
	if code != 1 || !hasLine(lines, "autoconn target 127.0.0.1:1 down") || !hasLine(lines, "limit hello_timeout hit 1 times") {
		t.Fatalf("service with a target down and a limit hit: exit %d %q", code, lines)
	}
	// --json --check: the document, and the exit code.
	jout, _, jcode := runH2(t, s2.bin, "-c", s2.cfgPath, "status", "--service", "--unix", s2.sock, "--check", "--json")
	var doc serviceStatusDoc
	if err := json.Unmarshal([]byte(jout), &doc); err != nil || jcode != 1 || doc.Health.State != HealthDegraded || doc.Service == nil {
		t.Fatalf("status --service --check --json: exit %d, %v: %s", jcode, err, jout)
	}
	checkSchemaRules(t, []byte(jout))
}

func appendFile(t testing.TB, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("\n" + text); err != nil {
		t.Fatal(err)
	}
}

// ---- metrics ----

// scrape is one exposition, parsed.
type scrape struct {
	text string
	mfs  map[string]*dto.MetricFamily
}

func parseScrape(t *testing.T, what, text string) scrape {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("%s: not Prometheus's text format: %v\n%s", what, err, text)
	}
	// Prometheus's own naming rules: units in names, _total counters,
	// help on each.
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatalf("%s: lint: %v", what, err)
	}
	for _, pr := range problems {
		if strings.HasPrefix(pr.Metric, "hammer2_") {
			t.Errorf("%s: %s: %s", what, pr.Metric, pr.Text)
		}
	}
	for name, mf := range mfs {
		if strings.HasPrefix(name, "hammer2_") && mf.GetHelp() == "" {
			t.Errorf("%s: %s has no help", what, name)
		}
	}
	return scrape{text: text, mfs: mfs}
}

// value is the sum of the samples of name whose labels include want
// (a histogram: its count); -1 if there are none.
func (s scrape) value(name string, want ...string) float64 {
	mf := s.mfs[name]
	if mf == nil {
		return -1
	}
	sum, n := 0.0, 0
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, lp := range m.GetLabel() {
			labels[lp.GetName()] = lp.GetValue()
		}
		ok := true
		for i := 0; i+1 < len(want); i += 2 {
			ok = ok && labels[want[i]] == want[i+1]
		}
		if !ok {
			continue
		}
		n++
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	if n == 0 {
		return -1
	}
	return sum
}

func httpScrape(t *testing.T, addr string) scrape {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s %v", addr, resp.Status, err)
	}
	// Read-only: anything but GET and HEAD is refused.
	post, err := c.Post("http://"+addr+"/metrics", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatalf("POST %s: %v", addr, err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: %s, want 405", post.Status)
	}
	return parseScrape(t, "http://"+addr, string(b))
}

func freeTCPAddr(t *testing.T) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(svcFreeTCPPort(t)))
}

// TestProcessMetrics scrapes a running service and a running leaf (a
// master of a one-master quorum group, with a kernel, on the service,
// with a REMOTE link to another leaf) and checks the names, the link,
// kernel, span, quorum and CAC metrics, and that they move after a commit
// and a cache-state grant.
func TestProcessMetrics(t *testing.T) {
	t.Parallel()
	svc := newSvcNode(t, "s", daemonOpts{})
	svcMetrics := freeTCPAddr(t)
	svc.daemonProc.start(append(svc.args(false, true), "--metrics-listen", svcMetrics),
		"metrics "+svcMetrics, "service running", serviceControlPath(svc.sock))
	s1 := httpScrape(t, svcMetrics)
	if v := s1.value("hammer2_spans"); v != 0 {
		t.Errorf("a new service's hammer2_spans = %v, want 0", v)
	}

	a, b := newLeafNode(t, "a", daemonOpts{}), newLeafNode(t, "b", daemonOpts{})
	a.trust(b)
	b.trust(a)
	a.writeConfig(fmt.Sprintf("\n[quorum]\nmasters = [%q]\ntick = \"100ms\"\nlease = \"2s\"\n", a.info.Fsid))
	b.start()
	leafMetrics := freeTCPAddr(t)
	a.startArgs("metrics "+leafMetrics, "-d", "leaf", "--listen", "none", "--backbone", "unix:"+svc.sock,
		"--metrics-listen", leafMetrics, a.pfs)
	if _, errOut, code := a.h2("-s", a.pfs, "connect", "span:"+b.addr); code != 0 {
		t.Fatalf("connect: exit %d: %s", code, errOut)
	}
	k, err := qpDialKernel(t, "ka", a, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := a.watch.waitSince(time.Time{}, 20*time.Second, func(r *controlResponse) bool {
		st := r.Status
		if st == nil || st.Kernel.State != DialUp || st.Quorum == nil || !st.Quorum.HasQuorum || st.Backbone == nil ||
			st.Backbone.State != DialUp || len(st.Remotes) != 1 || st.Remotes[0].State != DialUp {
			return false
		}
		return true
	}); !ok {
		t.Fatalf("a: no kernel, backbone, b and quorum up within 20s: %+v", a.latest())
	}

	l1 := httpScrape(t, leafMetrics)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"hammer2_kernel_link_up", nil, 1},
		{"hammer2_link_up", []string{"kind", "kernel"}, 1},
		{"hammer2_link_up", []string{"kind", "backbone"}, 1},
		{"hammer2_link_up", []string{"kind", "remote", "link", b.addr}, 1},
		{"hammer2_link_info", []string{"kind", "remote", "state", "up", "transport", "quic", "class", "authenticated-node"}, 1},
		{"hammer2_link_reconnects_total", []string{"kind", "remote"}, 0},
		{"hammer2_quorum_is_leader", nil, 1},
		{"hammer2_quorum_has_leader", nil, 1},
		{"hammer2_quorum_has_quorum", nil, 1},
		{"hammer2_quorum_members", nil, 1},
		{"hammer2_cac_held_states", []string{"holder", "group"}, 0},
	} {
		if v := l1.value(c.name, c.labels...); v != c.want {
			t.Errorf("leaf: %s%v = %v, want %v\n%s", c.name, c.labels, v, c.want, grepLines(l1.text, c.name))
		}
	}
	for _, name := range []string{"hammer2_link_received_bytes_total", "hammer2_link_sent_messages_total",
		"hammer2_link_queued_bytes", "hammer2_spans", "hammer2_span_updates_total", "hammer2_quorum_term",
		"hammer2_quorum_commit_index", "hammer2_quorum_applied_index", "hammer2_quorum_proposals_total",
		"hammer2_quorum_commit_latency_seconds", "hammer2_quorum_snapshot_index", "hammer2_cac_grants_total",
		"hammer2_cac_conflicts_total", "hammer2_cac_revocations_total", "hammer2_cac_expiries_total",
		"hammer2_build_info", "go_goroutines", "process_open_fds"} {
		if l1.mfs[name] == nil {
			t.Errorf("leaf: no %s", name)
		}
	}

	// Traffic: a commit and a cache state from the kernel.
	if r := k.qrmCommit([]byte("metrics"), 10*time.Second); r.outcome != qpAcked {
		t.Fatalf("commit: %+v", r)
	}
	if g := k.cacLockReq(cacLock{Domain: cacInum, Mode: cacExclusive, Lo: 7, Hi: 7}, 10*time.Second); g.outcome != qpAcked {
		t.Fatalf("CAC_LOCK: %+v", g)
	}
	// The one-shot, through the control socket. b's link is idle but for
	// its PINGs, one per ping_interval (250 ms): the first round trip is
	// in the histogram within a few intervals. Nothing in the status
	// stream marks a PING, so this asks again, every 100 ms for at most
	// 5 s (a group of one may elect itself before the first PING).
	var l2 scrape
	for range 50 {
		out, errOut, code := a.h2("metrics", a.pfs)
		if code != 0 {
			t.Fatalf("hammer2 metrics: exit %d: %s", code, errOut)
		}
		if l2 = parseScrape(t, "hammer2 metrics", out); l2.value("hammer2_link_rtt_seconds", "class", "authenticated-node") >= 1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if v := l2.value("hammer2_link_rtt_seconds", "class", "authenticated-node"); v < 1 {
		t.Errorf("leaf: no PING round trip of the link to b in hammer2_link_rtt_seconds (%v)\n%s", v, grepLines(l2.text, "hammer2_link_"))
	}
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"hammer2_quorum_proposals_total", nil},
		{"hammer2_quorum_commit_latency_seconds", nil},
		{"hammer2_quorum_applied_index", nil},
		{"hammer2_quorum_commit_index", nil},
		{"hammer2_cac_grants_total", nil},
		{"hammer2_cac_held_states", []string{"holder", "group"}},
		{"hammer2_link_received_bytes_total", []string{"kind", "kernel"}},
		{"hammer2_link_received_messages_total", []string{"kind", "kernel"}},
		{"hammer2_link_sent_bytes_total", []string{"kind", "kernel"}},
	} {
		if before, after := l1.value(c.name, c.labels...), l2.value(c.name, c.labels...); !(after > before) {
			t.Errorf("leaf: %s%v did not move with the commit and the grant: %v then %v", c.name, c.labels, before, after)
		}
	}

	// The service: the leaf's link and its span arrived.
	s2 := httpScrape(t, svcMetrics)
	sout, errOut, code := runH2(t, svc.bin, "-c", svc.cfgPath, "metrics", "--service", "--unix", svc.sock)
	if code != 0 {
		t.Fatalf("hammer2 metrics --service: exit %d: %s", code, errOut)
	}
	parseScrape(t, "hammer2 metrics --service", sout)
	if v := s2.value("hammer2_link_info", "kind", "link", "class", "local-privileged", "state", "up"); v < 1 {
		t.Errorf("service: hammer2_link_info of the leaf's link = %v\n%s", v, grepLines(s2.text, "hammer2_link_"))
	}
	for _, name := range []string{"hammer2_spans", "hammer2_span_updates_total", "hammer2_link_received_bytes_total",
		"hammer2_link_received_messages_total"} {
		if before, after := s1.value(name), s2.value(name); !(after > max(before, 0)) {
			t.Errorf("service: %s did not move as the leaf attached: %v then %v", name, before, after)
		}
	}
	if s2.mfs["hammer2_kernel_links"] == nil || s2.mfs["hammer2_span_relays"] == nil || s2.mfs["hammer2_link_rtt_seconds"] == nil {
		t.Errorf("service: kernel links, relays or the RTT histogram missing:\n%s", s2.text)
	}
}

// grepLines is text's lines holding s, for a failure's message.
func grepLines(text, s string) string {
	var b strings.Builder
	for l := range strings.Lines(text) {
		if strings.Contains(l, s) {
			b.WriteString(l)
		}
	}
	return b.String()
}
