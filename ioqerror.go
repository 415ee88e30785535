package main

// ioqError is one of DragonFly's DMSG_IOQ_ERROR_* link errors, the
// reasons libdmsg tears a userland link down. Errors returned by the crypto
// layer wrap one of the values below, so that a caller can test for the
// kind with errors.Is and log the DragonFly name.
type ioqError struct {
	code uint32 // DMSG_IOQ_ERROR_* value
	name string // the DragonFly name without prefix
	text string
}

func (e *ioqError) Error() string { return e.name + ": " + e.text }

// Code is the DMSG_IOQ_ERROR_* number, as older libdmsg put it in the
// LNK_ERROR it simulated on link loss.
func (e *ioqError) Code() uint32 { return e.code }

var (
	errIOQNoPeer      = &ioqError{9, "NOPEER", "peer address unknown"}
	errIOQNoRemoteKey = &ioqError{10, "NORKEY", "no key for the peer"}
	errIOQNoLocalKey  = &ioqError{11, "NOLKEY", "no local RSA key"}
	errIOQKeyExchange = &ioqError{12, "KEYXCHGFAIL", "key exchange failure"}
	errIOQKeyFormat   = &ioqError{13, "KEYFMT", "bad key format"}
	errIOQBadRandom   = &ioqError{14, "BADURANDOM", "bad random source"}
	errIOQIVWrap      = &ioqError{18, "IVWRAP", "GCM invocation counter exhausted"}
	errIOQMACFail     = &ioqError{19, "MACFAIL", "GCM authentication failed"}
)
