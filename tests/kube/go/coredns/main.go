// Command coredns is the meshguard local cluster's DNS server on its real
// nodes: CoreDNS with only the plugins a cluster DNS needs.
//
// It is upstream's coredns.go (github.com/coredns/coredns) with our own plugin
// list instead of core/plugin's import of every plugin, which is how CoreDNS
// chooses its plugins at compile time: each imported package registers itself,
// and core/dnsserver's Directives list only gives the order they run in (a
// Corefile naming a plugin that is not compiled in fails to load).
// build-cluster-bins.sh puts this file into a generated Go module that
// requires the pinned github.com/coredns/coredns.
package main

import (
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
