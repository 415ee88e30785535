package main

// DevCmd is `hammer2 dev` (dev.go): a development cluster on this machine.
type DevCmd struct {
	Masters int    `default:"3" help:"MASTER PFSs (each a voter of the quorum group)."`
	Slaves  int    `default:"0" help:"SLAVE PFSs of the same cluster (they forward to a master)."`
	Dir     string `placeholder:"DIR" help:"Where to put it (default: a new temporary directory)."`
	Keep    bool   `help:"Leave the directory behind on exit."`
}
