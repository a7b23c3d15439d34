package main

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// inspectedImage is what `image-inspect` reports of an image.
type inspectedImage struct {
	Digest       string          `json:"digest"`
	OS           string          `json:"os"`
	Architecture string          `json:"architecture"`
	Entrypoint   []string        `json:"entrypoint"`
	User         string          `json:"user"`
	ExposedPorts []string        `json:"exposed_ports"`
	Env          []string        `json:"env"`
	Files        []inspectedFile `json:"files"`
}

type inspectedFile struct {
	Path string `json:"path"`
	Mode int64  `json:"mode"`
	Size int64  `json:"size"`
}

// cmdImageInspect pulls a container image with go-containerregistry (the library Istio's agent
// fetches OCI images with, pkg/wasm/imagefetcher.go), validates it (pkg/v1/validate: every blob
// against its digest and size, the layers against the config's diff_ids), and unpacks its
// filesystem as a runtime would see it (pkg/v1/mutate Extract) into OUT. Prints the image's
// digest, platform, entrypoint, user, ports and files as JSON.
func cmdImageInspect(args []string) error {
	fs := flag.NewFlagSet("image-inspect", flag.ContinueOnError)
	insecure := fs.Bool("insecure", false, "the registry serves plain HTTP")
	basic := fs.String("basic", "", "USER:PASSWORD for the registry's basic authentication")
	if err := fs.Parse(args); err != nil || fs.NArg() != 2 {
		usage()
	}
	var opts []name.Option
	if *insecure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(fs.Arg(0), opts...)
	if err != nil {
		return err
	}
	auth := authn.Anonymous
	if *basic != "" {
		user, password, ok := strings.Cut(*basic, ":")
		if !ok {
			return errors.New("--basic wants USER:PASSWORD")
		}
		auth = &authn.Basic{Username: user, Password: password}
	}
	img, err := remote.Image(ref, remote.WithAuth(auth))
	if err != nil {
		return fmt.Errorf("pulling %s: %w", ref, err)
	}
	if err := validate.Image(img); err != nil {
		return fmt.Errorf("%s is not a valid image: %w", ref, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	out := inspectedImage{
		Digest:       digest.String(),
		OS:           cfg.OS,
		Architecture: cfg.Architecture,
		Entrypoint:   cfg.Config.Entrypoint,
		User:         cfg.Config.User,
		Env:          cfg.Config.Env,
	}
	for p := range cfg.Config.ExposedPorts {
		out.ExposedPorts = append(out.ExposedPorts, p)
	}
	dir := fs.Arg(1)
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("unpacking %s: %w", ref, err)
		}
		out.Files = append(out.Files, inspectedFile{Path: h.Name, Mode: h.Mode, Size: h.Size})
		if h.Typeflag != tar.TypeReg {
			continue
		}
		clean := filepath.Clean("/" + h.Name)
		dest := filepath.Join(dir, clean)
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(dest, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(h.Mode)&os.ModePerm)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, tr); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
