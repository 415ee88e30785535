package main

// `hammer2 metrics`: a running leaf's or service's metrics, once, in
// Prometheus's text format, through its control socket (whatever
// metrics_listen says): for a look by hand, node_exporter's textfile
// collector, or a test.

import (
	"fmt"
)

// MetricsCmd is `hammer2 metrics`.
type MetricsCmd struct {
	PFS     string `arg:"" optional:"" name:"path" help:"The PFS whose leaf to ask (default -s or \".\")."`
	Service bool   `name:"service" help:"Ask the node's service daemon instead."`
	Unix    string `name:"unix" help:"With --service: the service's Unix socket (default: the config's [service] unix)." placeholder:"PATH"`
}

func (c *MetricsCmd) Run(env *Env) error {
	cfg, err := env.loadConfig()
	if err != nil {
		return err
	}
	var control string
	if c.Service {
		sock := cfg.Service.Unix
		if c.Unix != "" {
			sock = c.Unix
		}
		control = serviceControlPath(sock)
	} else {
		p := c.PFS
		if p == "" {
			p = env.pfsPath()
		}
		_, paths, _, err := pfsPlaces(cfg, p)
		if err != nil {
			return err
		}
		control = paths.control
	}
	resp, err := controlCall(control, controlRequest{Op: "metrics"})
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	_, err = fmt.Fprint(env.Stdout, resp.Metrics)
	return err
}

// controlReadOnly reports a control op that only looks, which any caller
// that can reach the socket may ask.
func controlReadOnly(op string) bool {
	return op == "status" || op == "watch" || op == "metrics"
}

// textOrError is text for a control answer: the text, or the error's.
func (o *observer) textOrError() (string, string) {
	t, err := o.text()
	if err != nil {
		return "", err.Error()
	}
	return t, ""
}
