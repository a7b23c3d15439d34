// Command kubelet is the meshguard local cluster's node agent on its real nodes.
//
// It is the same program as k8s.io/kubernetes/cmd/kubelet, rebuilt from the
// module proxy in the generated module that build-cluster-bins.sh writes (see
// kube-apiserver/main.go for why).
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // for client metric registration
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	command := app.NewKubeletCommand(context.Background())
	code := cli.Run(command)
	os.Exit(code)
}
