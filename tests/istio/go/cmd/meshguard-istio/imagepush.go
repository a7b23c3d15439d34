package main

import (
	"archive/tar"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/google/go-containerregistry/pkg/name"
)

// multiFlag collects a repeated flag's values in order.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// layerEntry is one path of the image's single layer.
type layerEntry struct {
	dest   string // absolute path in the image
	src    string // a regular file on this machine (files only)
	target string // the link target (symlinks only)
	dir    bool
}

// cmdImagePush assembles a container image of one layer from files on this machine, as a
// Dockerfile's COPY lines would (owner root, the source's permission bits, mtime 0, parent
// folders created), and pushes it with go-containerregistry (pkg/v1/remote, the library
// Istio's agent pulls images with). Prints the pushed manifest's digest.
//
//	image-push [--insecure] --file DEST=SRC... [--dir DEST...] [--symlink DEST=TARGET...]
//	  [--entrypoint ARG...] [--env K=V...] [--user U] [--workdir W] REFERENCE
func cmdImagePush(args []string) error {
	fs := flag.NewFlagSet("image-push", flag.ContinueOnError)
	insecure := fs.Bool("insecure", false, "the registry serves plain HTTP")
	var files, dirs, links, entrypoint, env multiFlag
	fs.Var(&files, "file", "DEST=SRC: the file SRC as DEST in the image (repeatable)")
	fs.Var(&dirs, "dir", "DEST: an empty folder (repeatable)")
	fs.Var(&links, "symlink", "DEST=TARGET: a symbolic link (repeatable)")
	fs.Var(&entrypoint, "entrypoint", "one entrypoint argument (repeatable, in order)")
	fs.Var(&env, "env", "K=V in the image's environment (repeatable)")
	user := fs.String("user", "", "the image's user (UID:GID)")
	workdir := fs.String("workdir", "/", "the image's working folder")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
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
	entries := map[string]layerEntry{}
	add := func(e layerEntry) error {
		e.dest = path.Clean("/" + e.dest)
		if e.dest == "/" {
			return errors.New("an entry may not be the root folder")
		}
		if old, ok := entries[e.dest]; ok && !(old.dir && e.dir) {
			return fmt.Errorf("%s is named twice", e.dest)
		}
		entries[e.dest] = e
		for p := path.Dir(e.dest); p != "/"; p = path.Dir(p) {
			if old, ok := entries[p]; ok && !old.dir {
				return fmt.Errorf("%s is a folder of %s and also a file", p, e.dest)
			}
			entries[p] = layerEntry{dest: p, dir: true}
		}
		return nil
	}
	for _, f := range files {
		dest, src, ok := strings.Cut(f, "=")
		if !ok {
			return fmt.Errorf("--file wants DEST=SRC, got %q", f)
		}
		if err := add(layerEntry{dest: dest, src: src}); err != nil {
			return err
		}
	}
	for _, d := range dirs {
		if err := add(layerEntry{dest: d, dir: true}); err != nil {
			return err
		}
	}
	for _, l := range links {
		dest, target, ok := strings.Cut(l, "=")
		if !ok {
			return fmt.Errorf("--symlink wants DEST=TARGET, got %q", l)
		}
		if err := add(layerEntry{dest: dest, target: target}); err != nil {
			return err
		}
	}
	layerFile, err := os.CreateTemp("", "meshguard-image-layer-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(layerFile.Name())
	if err := writeLayer(layerFile, entries); err != nil {
		layerFile.Close()
		return err
	}
	if err := layerFile.Close(); err != nil {
		return err
	}
	layer, err := tarball.LayerFromFile(layerFile.Name(), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cfg.Config = v1.Config{Entrypoint: entrypoint, Env: env, User: *user, WorkingDir: *workdir}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img); err != nil {
		return fmt.Errorf("pushing %s: %w", ref, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Println(digest.String())
	return nil
}

// writeLayer writes entries as a tar, parents before children, reproducibly.
func writeLayer(w io.Writer, entries map[string]layerEntry) error {
	paths := make([]string, 0, len(entries))
	for p := range entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	epoch := time.Unix(0, 0)
	for _, p := range paths {
		e := entries[p]
		h := &tar.Header{Name: strings.TrimPrefix(p, "/"), ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case e.dir:
			h.Typeflag, h.Mode, h.Name = tar.TypeDir, 0o755, h.Name+"/"
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
		case e.target != "":
			h.Typeflag, h.Mode, h.Linkname = tar.TypeSymlink, 0o777, e.target
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
		default:
			if err := writeFileEntry(tw, h, e.src); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// writeFileEntry copies the regular file src (links followed) into tw under h.
func writeFileEntry(tw *tar.Writer, h *tar.Header, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	h.Typeflag, h.Mode, h.Size = tar.TypeReg, int64(st.Mode().Perm()), st.Size()
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}
