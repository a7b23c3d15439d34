// Command meshguard-registry serves the CNCF distribution registry
// (github.com/distribution/distribution/v3, its registry/handlers application with the
// filesystem storage driver) on loopback, for meshguard's tests of `meshctl publish`. It is
// built by tests/istio/build.sh from the Go module proxy at the version pinned in
// tests/istio/versions.env.
//
//	meshguard-registry --root DIR [--user NAME:PASSWORD [--realm REALM]]
//
// With --user, every request needs that user's HTTP basic credentials (the htpasswd access
// controller). The registry listens on 127.0.0.1 on a free port and prints
// "listening on 127.0.0.1:PORT" as its first stdout line; it runs until killed.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "meshguard-registry: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	root := flag.String("root", "", "storage directory")
	user := flag.String("user", "", "NAME:PASSWORD required on every request")
	// Istio's agent refuses a 401 whose WWW-Authenticate realm is not an http(s) URL of a
	// public host (istio pkg/wasm/imagefetcher.go validateRealmURL), Basic challenges included.
	realm := flag.String("realm", "https://registry.meshguard.invalid/", "the realm of the Basic challenge")
	flag.Parse()
	if *root == "" {
		return fmt.Errorf("--root is required")
	}
	config := &configuration.Configuration{
		Version: "0.1",
		Storage: configuration.Storage{
			"filesystem": configuration.Parameters{"rootdirectory": *root},
		},
	}
	config.Log.Level = "warn"
	config.Log.AccessLog.Disabled = true
	if *user != "" {
		name, password, ok := strings.Cut(*user, ":")
		if !ok {
			return fmt.Errorf("--user must be NAME:PASSWORD")
		}
		hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
		if err != nil {
			return err
		}
		path := filepath.Join(*root, "htpasswd")
		if err := os.WriteFile(path, []byte(name+":"+string(hash)+"\n"), 0o600); err != nil {
			return err
		}
		config.Auth = configuration.Auth{
			"htpasswd": configuration.Parameters{"realm": *realm, "path": path},
		}
	}
	// Refused attempts are part of the tests; only errors are worth printing.
	logrus.SetLevel(logrus.ErrorLevel)
	app := handlers.NewApp(context.Background(), config)
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", listener.Addr())
	return http.Serve(listener, app)
}
