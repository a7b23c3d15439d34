// Command kube-apiserver is the meshguard test cluster's API server.
//
// It is the same program as k8s.io/kubernetes/cmd/kube-apiserver, rebuilt from
// the module proxy (k8s.io/kubernetes cannot be `go install`ed because its
// go.mod points the staging modules at ./staging). build-cluster-bins.sh puts
// this file into a generated Go module that pins k8s.io/kubernetes and
// replaces every staging module with its published k8s.io/<name> release.
package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	command := app.NewAPIServerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
