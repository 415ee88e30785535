package main

import (
	"bytes"
	"strings"
	"testing"
)

// Run as hammer2-leaf (as `go run .` names the binary), a command word
// anywhere after the global flags selects the full CLI.
func TestMultiCallDispatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"hammer2-leaf", "--help"}, "Usage: hammer2-leaf [<pfs>]"},
		{[]string{"hammer2-leaf", "-d", "leaf", "--help"}, "Usage: hammer2 leaf"},
		{[]string{"hammer2-leaf", "-s", "x", "status", "--help"}, "Usage: hammer2 status"},
		{[]string{"/sbin/hammer2", "--help"}, "Usage: hammer2 <command>"},
		{[]string{"hammer2", "keygen", "--help"}, "Usage: hammer2 keygen"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		if code != 0 || !strings.Contains(out.String(), tc.want) {
			t.Errorf("%q: exit %d, output %q, stderr %q; want %q", tc.args, code, firstLine(out.String()), errb.String(), tc.want)
		}
	}
	var out, errb bytes.Buffer
	if code := run([]string{"hammer2", "--version"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "hammer2-leaf") {
		t.Errorf("--version: exit %d, %q", code, out.String())
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
