//go:build tools

// Package control names Istio's own commands that the local mesh runs, so that `go mod tidy`
// in the generated module resolves their requirements too: istiod (pilot-discovery), the
// sidecar's agent (pilot-agent) and the installer (istioctl). build.sh builds them unmodified
// from istio.io/istio at ISTIO_VERSION; this file is never compiled.
package control

import (
	_ "istio.io/istio/istioctl/cmd/istioctl"
	_ "istio.io/istio/pilot/cmd/pilot-agent"
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
)
