// Command etcd is the meshguard test cluster's etcd server.
//
// It is the same program as the upstream etcd binary (go.etcd.io/etcd/v3's
// main.go), rebuilt from the module proxy: the etcd root module replaces its
// sub-modules with local paths, so it cannot be `go install`ed, but
// go.etcd.io/etcd/server/v3/etcdmain carries the whole command.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
