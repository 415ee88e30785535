package main

// Who is on the other end of a link, and what that lets it do
// (docs/SECURITY.md). Every link gets a PeerIdentity when it is accepted
// or dialed, before its first message is read, and keeps it for life:
//
//   - an authenticated node proved a key we trust (QUIC: its pinned
//     Ed25519 certificate);
//   - a local privileged peer is a process on this machine running as
//     root, as the daemon's own user, or in the configured group, as the
//     kernel tells us (SO_PEERCRED on a Unix socket; on Linux, the owner of
//     a loopback TCP socket by NETLINK_SOCK_DIAG);
//   - everything else is unprivileged: it may look (shell help and tree,
//     span listings, receiving spans) but changes nothing.

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"
)

// LinkClass is what a link's peer may do.
type LinkClass uint8

const (
	// ClassUnprivileged may read: the shell's help, tree and ping, span
	// listings, the spans relayed to it. Its spans are not relayed and it
	// opens nothing through us.
	ClassUnprivileged LinkClass = iota
	// ClassLocalPrivileged is root, the daemon's user or the configured
	// group on this machine: a leaf, the kernel, an operator's shell.
	ClassLocalPrivileged
	// ClassAuthenticatedNode proved a trusted node key.
	ClassAuthenticatedNode
)

func (c LinkClass) String() string {
	switch c {
	case ClassLocalPrivileged:
		return "local-privileged"
	case ClassAuthenticatedNode:
		return "authenticated-node"
	}
	return "unprivileged"
}

// Privileged reports whether the class may change cluster state.
func (c LinkClass) Privileged() bool { return c != ClassUnprivileged }

// PeerIdentity is what we know of a link's peer. UID, GID and PID are -1
// where unknown (a remote node, or a credential the OS does not give).
type PeerIdentity struct {
	Class       LinkClass
	UID, GID    int
	PID         int
	Fingerprint string // the key an authenticated node proved
	// Via says how the class was learned: "quic", "so_peercred",
	// "sock_diag", "tcp_getcred", "socketpair", or why it could not be
	// (e.g. "remote address").
	Via string
}

// unknownPeer is an identity nothing is known about: unprivileged.
func unknownPeer(via string) PeerIdentity {
	return PeerIdentity{Class: ClassUnprivileged, UID: -1, GID: -1, PID: -1, Via: via}
}

// nodePeer is a peer that proved the trusted key fp.
func nodePeer(fp, via string) PeerIdentity {
	return PeerIdentity{Class: ClassAuthenticatedNode, UID: -1, GID: -1, PID: -1, Fingerprint: fp, Via: via}
}

func (p PeerIdentity) String() string {
	switch {
	case p.Fingerprint != "":
		return fmt.Sprintf("%s key %s", p.Class, p.Fingerprint)
	case p.UID >= 0 && p.PID >= 0:
		return fmt.Sprintf("%s uid %d pid %d", p.Class, p.UID, p.PID)
	case p.UID >= 0:
		return fmt.Sprintf("%s uid %d", p.Class, p.UID)
	}
	return fmt.Sprintf("%s (%s)", p.Class, p.Via)
}

// attrs are the identity's log attributes: every line about a link names
// who is behind it.
func (p PeerIdentity) attrs() []any {
	a := []any{"class", p.Class.String()}
	if p.Fingerprint != "" {
		a = append(a, "key", p.Fingerprint)
	}
	if p.UID >= 0 {
		a = append(a, "uid", p.UID)
	}
	if p.PID >= 0 {
		a = append(a, "pid", p.PID)
	}
	return a
}

// logger is log with the identity's attributes.
func (p PeerIdentity) logger(log *slog.Logger) *slog.Logger { return log.With(p.attrs()...) }

// privilegePolicy decides which local peers are privileged: root, the
// daemon's own effective user (who could do anything the daemon can
// anyway), and members of the configured group.
type privilegePolicy struct {
	self  int // our effective uid
	group int // gid of the configured group, -1 for none
	// groupName is the configured group, for messages.
	groupName string
}

// newPrivilegePolicy resolves the configured group ("" for none; a name
// or a numeric gid).
func newPrivilegePolicy(group string) (privilegePolicy, error) {
	p := privilegePolicy{self: os.Geteuid(), group: -1, groupName: group}
	if group == "" {
		return p, nil
	}
	gid, err := lookupGroup(group)
	if err != nil {
		return p, fmt.Errorf("key security.group: %w", err)
	}
	p.group = gid
	return p, nil
}

func lookupGroup(group string) (int, error) {
	if n, err := strconv.Atoi(group); err == nil && n >= 0 {
		return n, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return -1, fmt.Errorf("group %q: %w", group, err)
	}
	return strconv.Atoi(g.Gid)
}

// classify turns a local peer's credentials into an identity.
func (p privilegePolicy) classify(uid, gid, pid int, via string) PeerIdentity {
	id := PeerIdentity{Class: ClassUnprivileged, UID: uid, GID: gid, PID: pid, Via: via}
	if uid == 0 || uid == p.self || p.inGroup(uid, gid) {
		id.Class = ClassLocalPrivileged
	}
	return id
}

// inGroup reports whether the user is in the configured group, as its
// primary group or (from the group database) a supplementary one.
func (p privilegePolicy) inGroup(uid, gid int) bool {
	if p.group < 0 || uid < 0 {
		return false
	}
	if gid == p.group {
		return true
	}
	u, err := user.LookupId(strconv.Itoa(uid))
	if err != nil {
		return false
	}
	gids, err := u.GroupIds()
	return err == nil && slices.Contains(gids, strconv.Itoa(p.group))
}

// needs is the refusal text for a privileged operation on an
// unprivileged link: it names what would have been allowed.
func (p privilegePolicy) needs(what string, peer PeerIdentity) string {
	who := "root"
	if p.self != 0 {
		who += " or uid " + strconv.Itoa(p.self)
	}
	if p.groupName != "" {
		who += " or group " + p.groupName
	}
	return fmt.Sprintf("%s: refused: needs a privileged link (%s on this machine, or an authenticated node); this link is %s",
		what, who, peer)
}

// identify learns the identity of a local stream's peer: SO_PEERCRED for a
// Unix socket, the socket owner for a loopback TCP peer (Linux and
// DragonFly), and unprivileged for anything else.
func (p privilegePolicy) identify(c net.Conn) PeerIdentity {
	switch c := c.(type) {
	case *net.UnixConn:
		uid, gid, pid, err := unixPeerCred(c)
		if err != nil {
			return unknownPeer("so_peercred: " + err.Error())
		}
		return p.classify(uid, gid, pid, "so_peercred")
	case *net.TCPConn:
		ra, _ := c.RemoteAddr().(*net.TCPAddr)
		la, _ := c.LocalAddr().(*net.TCPAddr)
		if ra == nil || la == nil || !ra.IP.IsLoopback() {
			return unknownPeer("remote address")
		}
		uid, via, err := tcpPeerUID(la, ra)
		if err != nil {
			return unknownPeer(via + ": " + err.Error())
		}
		return p.classify(uid, -1, -1, via)
	}
	return unknownPeer(fmt.Sprintf("%T", c))
}
