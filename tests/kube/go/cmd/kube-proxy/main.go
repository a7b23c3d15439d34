// Command kube-proxy is the meshguard local cluster's Service proxy on its real
// nodes.
//
// It is the same program as k8s.io/kubernetes/cmd/kube-proxy, rebuilt from the
// module proxy in the generated module that build-cluster-bins.sh writes (see
// kube-apiserver/main.go for why).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // for client metric registration
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() {
	command := app.NewProxyCommand()
	code := cli.Run(command)
	os.Exit(code)
}
