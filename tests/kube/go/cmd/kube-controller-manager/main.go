// Command kube-controller-manager is the meshguard local cluster's controller
// manager (Deployments, ReplicaSets, the HPA, namespaces, service accounts, the
// node lifecycle...).
//
// It is the same program as k8s.io/kubernetes/cmd/kube-controller-manager,
// rebuilt from the module proxy in the generated module that
// build-cluster-bins.sh writes (see kube-apiserver/main.go for why).
package main

import (
	"os"
	_ "time/tzdata" // for CronJob's time zone support

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	command := app.NewControllerManagerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
