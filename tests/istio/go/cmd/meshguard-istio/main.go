// Command meshguard-istio runs Istio's own code on what meshctl renders, for meshguard's tests.
// It is built by tests/istio/build.sh from istio.io/istio on the Go module proxy (pinned in
// tests/istio/versions.env) and exposes only what the tests need:
//
//	meshguard-istio inject [--cni] FILE
//	    Runs Istio's sidecar injector (pkg/kube/inject, the code behind `istioctl kube-inject`)
//	    with the default injection templates (the istio-discovery chart, rendered by
//	    operator/pkg/render as `istioctl install` does) on every Deployment in FILE, and prints
//	    one injected Pod per Deployment as a YAML stream. --cni renders the chart with
//	    components.cni.enabled=true, which sets values.pilot.cni.enabled (Istio CNI installed).
//
//	meshguard-istio injector-configmap [--cni]
//	    Prints the istio-sidecar-injector ConfigMap those charts render (what istiod and
//	    `istioctl kube-inject` read the templates and values from), as YAML.
//
//	meshguard-istio sidecar-stats [--template PATH] FILE
//	    For every Deployment in FILE: injects it as above, then does what the injected
//	    istio-proxy container's pilot-agent does before it starts Envoy: builds the ProxyConfig
//	    from PROXY_CONFIG (pilot/cmd/pilot-agent/config), the node metadata from the container's
//	    environment (pkg/bootstrap GetNodeMetaData) and the bootstrap from Istio's template
//	    (pkg/bootstrap WriteTo, tools/packaging/common/envoy_bootstrap.json). When the pod sets
//	    ISTIO_BOOTSTRAP_OVERRIDE, the file it names (a ConfigMap from FILE mounted by the
//	    injector) is what pilot-agent hands Envoy as --config-yaml (pkg/envoy/proxy.go); Envoy
//	    merges that message into the bootstrap, which is done here with protobuf Merge on
//	    go-control-plane's Bootstrap type. Prints a JSON array, one entry per Deployment, with
//	    the resulting stats_config.
//
//	meshguard-istio sidecar-bootstrap [--template PATH] FILE
//	    The same steps, without the merge: prints a JSON array, one entry per Deployment, with the
//	    whole bootstrap pilot-agent writes for its pod (`bootstrap`) and the bootstrap override as
//	    JSON (`override`), which tests hand to a real Envoy as --config-yaml, as pilot-agent does,
//	    so that Envoy itself merges it.
//
//	meshguard-istio sidecar-ecds [--module URL=PATH]... FILE
//	    For every Deployment in FILE: the inbound listener istiod's own code (pilot) builds for its
//	    sidecar from the Istio configuration and Services in FILE, as the HTTP filters of each
//	    inbound chain of the Deployment's Service ports, and the ECDS resources (the Wasm filters'
//	    TypedExtensionConfigs) istiod serves for them, after the agent's rewrite of each module URL
//	    to the local file --module names (see ecds.go). Prints a JSON array, one entry per
//	    Deployment.
//
//	meshguard-istio validate FILE
//	    `istioctl validate -f FILE` (istioctl/pkg/validate).
//
//	meshguard-istio fetch [--insecure] [--pull-secret DOCKERCONFIG] URL SHA256 OUT
//	    Fetches a Wasm module as Istio's agent does (pkg/wasm LocalFileCache.Get with the
//	    WasmPlugin's sha256) and copies the module it returns to OUT.
//
//	meshguard-istio image-inspect [--insecure] [--basic USER:PASSWORD] REF OUT
//	    Pulls a container image with go-containerregistry (the library the agent fetches OCI
//	    images with), validates every blob against its digest and the layers against the
//	    config, unpacks its filesystem into OUT and prints its platform, entrypoint, user, ports
//	    and files as JSON (see image.go).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/config/metrics/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	meshconfig "istio.io/api/mesh/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	sigyaml "sigs.k8s.io/yaml"

	"istio.io/istio/istioctl/pkg/cli"
	"istio.io/istio/istioctl/pkg/validate"
	"istio.io/istio/operator/pkg/render"
	agentconfig "istio.io/istio/pilot/cmd/pilot-agent/config"
	"istio.io/istio/pkg/bootstrap"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/kube/inject"
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/util/sets"
	"istio.io/istio/pkg/wasm"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	// Istio logs to stdout by default; stdout carries the results here.
	logOpts := istiolog.DefaultOptions()
	logOpts.OutputPaths = []string{"stderr"}
	logOpts.ErrorOutputPaths = []string{"stderr"}
	if err := istiolog.Configure(logOpts); err != nil {
		fmt.Fprintf(os.Stderr, "meshguard-istio: configuring Istio's logging: %v\n", err)
		os.Exit(1)
	}
	var err error
	switch os.Args[1] {
	case "inject":
		err = cmdInject(os.Args[2:])
	case "injector-configmap":
		err = cmdInjectorConfigMap(os.Args[2:])
	case "sidecar-stats":
		err = cmdSidecarStats(os.Args[2:])
	case "sidecar-bootstrap":
		err = cmdSidecarBootstrap(os.Args[2:])
	case "sidecar-ecds":
		err = cmdSidecarECDS(os.Args[2:])
	case "validate":
		err = cmdValidate(os.Args[2:])
	case "image-inspect":
		err = cmdImageInspect(os.Args[2:])
	case "fetch":
		err = cmdFetch(os.Args[2:])
	case "image-push":
		err = cmdImagePush(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "meshguard-istio %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: meshguard-istio inject [--cni] FILE | injector-configmap [--cni] | sidecar-stats [--template PATH] FILE | sidecar-bootstrap [--template PATH] FILE | sidecar-ecds [--module URL=PATH]... FILE | validate FILE | fetch [--insecure] [--pull-secret FILE] URL SHA256 OUT | image-inspect [--insecure] [--basic USER:PASSWORD] REF OUT | image-push [--insecure] [--file DEST=SRC]... [--dir DEST]... [--symlink DEST=TARGET]... [--entrypoint ARG]... [--env K=V]... [--user U] [--workdir W] REF")
	os.Exit(2)
}

// injection is what the injector runs with: the templates, the chart values and the mesh config,
// taken from the istio-sidecar-injector and istio ConfigMaps of the rendered istio-discovery chart.
type injection struct {
	templates inject.Templates
	values    inject.ValuesConfig
	mesh      *meshconfig.MeshConfig
}

// renderCharts renders Istio's charts (embedded in the istio module, istio.io/istio/manifests)
// as `istioctl install --set profile=empty --set components.pilot.enabled=true` would.
func renderCharts(cni bool) ([]*unstructured.Unstructured, error) {
	flags := []string{
		"profile=empty",
		"components.pilot.enabled=true",
		// istioctl's own switch; operator/pkg/render/manifest.go sets values.pilot.cni.enabled
		// from it (a values.pilot.cni.enabled flag alone is overwritten).
		fmt.Sprintf("components.cni.enabled=%t", cni),
	}
	sets, _, err := render.GenerateManifest(nil, flags, false, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("rendering Istio's charts: %w", err)
	}
	var out []*unstructured.Unstructured
	for _, set := range sets {
		for _, m := range set.Manifests {
			out = append(out, m.Unstructured)
		}
	}
	return out, nil
}

func cmdInjectorConfigMap(args []string) error {
	fs := flag.NewFlagSet("injector-configmap", flag.ContinueOnError)
	cni := fs.Bool("cni", false, "Istio CNI is installed (components.cni.enabled=true)")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		usage()
	}
	objs, err := renderCharts(*cni)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" && o.GetName() == "istio-sidecar-injector" {
			b, err := sigyaml.Marshal(o.Object)
			if err != nil {
				return err
			}
			_, err = os.Stdout.Write(b)
			return err
		}
	}
	return errors.New("the rendered charts have no istio-sidecar-injector ConfigMap")
}

// loadInjection renders Istio's charts (embedded in the istio module, istio.io/istio/manifests)
// as `istioctl install --set profile=empty --set components.pilot.enabled=true` would, the same
// way Istio's own injector tests do (pkg/kube/inject/webhook_test.go getInjectionSettings).
func loadInjection(cni bool) (*injection, error) {
	objs, err := renderCharts(cni)
	if err != nil {
		return nil, err
	}
	out := &injection{}
	{
		for _, m := range objs {
			if m.GetKind() != "ConfigMap" {
				continue
			}
			data, _ := m.Object["data"].(map[string]any)
			switch m.GetName() {
			case "istio-sidecar-injector":
				raw, _ := data["config"].(string)
				vals, _ := data["values"].(string)
				cfg, err := inject.UnmarshalConfig([]byte(raw))
				if err != nil {
					return nil, fmt.Errorf("injection config: %w", err)
				}
				vc, err := inject.NewValuesConfig(vals)
				if err != nil {
					return nil, fmt.Errorf("injection values: %w", err)
				}
				out.templates = cfg.Templates
				out.values = vc
			case "istio":
				meshData, _ := data["mesh"].(string)
				mc, err := mesh.ApplyMeshConfig(meshData, mesh.DefaultMeshConfig())
				if err != nil {
					return nil, fmt.Errorf("mesh config: %w", err)
				}
				out.mesh = mc
			}
		}
	}
	if out.templates == nil || out.mesh == nil {
		return nil, errors.New("the rendered charts have no istio-sidecar-injector or istio ConfigMap")
	}
	return out, nil
}

// objects is what a rendered YAML stream holds that the commands use.
type objects struct {
	deployments []*appsv1.Deployment
	configMaps  map[string]*corev1.ConfigMap
	services    []*corev1.Service
}

func readObjects(path string) (*objects, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := &objects{configMaps: map[string]*corev1.ConfigMap{}}
	reader := yaml.NewYAMLReader(bufio.NewReader(f))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", path, err)
		}
		var head struct {
			Kind string `json:"kind"`
		}
		if err := sigyaml.Unmarshal(doc, &head); err != nil {
			return nil, fmt.Errorf("reading %s: %w", path, err)
		}
		switch head.Kind {
		case "Deployment":
			d := &appsv1.Deployment{}
			if err := sigyaml.UnmarshalStrict(doc, d); err != nil {
				return nil, fmt.Errorf("Deployment in %s: %w", path, err)
			}
			out.deployments = append(out.deployments, d)
		case "Service":
			svc := &corev1.Service{}
			if err := sigyaml.UnmarshalStrict(doc, svc); err != nil {
				return nil, fmt.Errorf("Service in %s: %w", path, err)
			}
			out.services = append(out.services, svc)
		case "ConfigMap":
			c := &corev1.ConfigMap{}
			if err := sigyaml.UnmarshalStrict(doc, c); err != nil {
				return nil, fmt.Errorf("ConfigMap in %s: %w", path, err)
			}
			out.configMaps[c.Name] = c
		}
	}
}

// injectPod runs the injector on one Deployment and returns the Pod its ReplicaSet would create,
// as the mutating webhook would see it: the pod template, in the Deployment's namespace.
func injectPod(inj *injection, d *appsv1.Deployment) (*corev1.Pod, error) {
	var warnings []string
	out, err := inject.IntoObject(nil, inj.templates, inj.values, "", inj.mesh, d, func(w string) {
		warnings = append(warnings, w)
	})
	if err != nil {
		return nil, fmt.Errorf("injecting %s: %w", d.Name, err)
	}
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "injector warning for %s: %s\n", d.Name, w)
	}
	injected, ok := out.(*appsv1.Deployment)
	if !ok {
		return nil, fmt.Errorf("injecting %s returned a %T", d.Name, out)
	}
	t := injected.Spec.Template
	pod := &corev1.Pod{ObjectMeta: t.ObjectMeta, Spec: t.Spec}
	pod.APIVersion, pod.Kind = "v1", "Pod"
	pod.Name = d.Name + "-0"
	pod.Namespace = d.Namespace
	return pod, nil
}

func cmdInject(args []string) error {
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	cni := fs.Bool("cni", false, "Istio CNI is installed (components.cni.enabled=true)")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		usage()
	}
	objs, err := readObjects(fs.Arg(0))
	if err != nil {
		return err
	}
	inj, err := loadInjection(*cni)
	if err != nil {
		return err
	}
	for _, d := range objs.deployments {
		pod, err := injectPod(inj, d)
		if err != nil {
			return err
		}
		b, err := sigyaml.Marshal(pod)
		if err != nil {
			return err
		}
		fmt.Printf("---\n%s", b)
	}
	return nil
}

// proxyContainer is the injected istio-proxy container (a native sidecar is an init container).
func proxyContainer(pod *corev1.Pod) (*corev1.Container, error) {
	for _, list := range [][]corev1.Container{pod.Spec.Containers, pod.Spec.InitContainers} {
		for i := range list {
			if list[i].Name == "istio-proxy" {
				return &list[i], nil
			}
		}
	}
	return nil, fmt.Errorf("pod %s has no istio-proxy container after injection", pod.Name)
}

// fieldValue is what the kubelet would put into an env var taken from a pod field; the values
// are a stand-in pod's (IP addresses from the documentation ranges).
func fieldValue(pod *corev1.Pod, path string) string {
	switch path {
	case "metadata.name":
		return pod.Name
	case "metadata.namespace":
		return pod.Namespace
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName
	case "spec.nodeName":
		return "node-0"
	case "status.podIP", "status.podIPs":
		return "192.0.2.10"
	case "status.hostIP", "status.hostIPs":
		return "192.0.2.1"
	}
	return ""
}

// containerEnv resolves the container's environment as the kubelet would.
func containerEnv(pod *corev1.Pod, c *corev1.Container) map[string]string {
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = os.Expand(e.Value, func(k string) string { return env[k] })
		case e.ValueFrom.FieldRef != nil:
			env[e.Name] = fieldValue(pod, e.ValueFrom.FieldRef.FieldPath)
		case e.ValueFrom.ResourceFieldRef != nil:
			env[e.Name] = "2"
		}
	}
	return env
}

// mountedFile returns the content of the file at path in container c, when a ConfigMap volume
// provides it.
func mountedFile(pod *corev1.Pod, c *corev1.Container, cms map[string]*corev1.ConfigMap, path string) (string, error) {
	for _, m := range c.VolumeMounts {
		rel, err := filepath.Rel(m.MountPath, path)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		for _, v := range pod.Spec.Volumes {
			if v.Name != m.Name || v.ConfigMap == nil {
				continue
			}
			cm, ok := cms[v.ConfigMap.Name]
			if !ok {
				return "", fmt.Errorf("%s is mounted from ConfigMap %s, which is not in the input", path, v.ConfigMap.Name)
			}
			data, ok := cm.Data[rel]
			if !ok {
				return "", fmt.Errorf("ConfigMap %s has no key %s", cm.Name, rel)
			}
			return data, nil
		}
	}
	return "", fmt.Errorf("no ConfigMap volume of the istio-proxy container provides %s", path)
}

type sidecarStats struct {
	Deployment        string          `json:"deployment"`
	BootstrapOverride string          `json:"bootstrap_override,omitempty"`
	StatsConfig       json.RawMessage `json:"stats_config"`
}

func cmdSidecarStats(args []string) error {
	var out []sidecarStats
	err := forEachSidecar("sidecar-stats", args, func(inj *injection, d *appsv1.Deployment, cms map[string]*corev1.ConfigMap, template string) error {
		s, err := statsOf(inj, d, cms, template)
		if err == nil {
			out = append(out, *s)
		}
		return err
	})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// generatedSidecar is what pilot-agent starts Envoy with for one Deployment's pod: the bootstrap
// Istio's generator writes, and the bootstrap override (as JSON) it hands Envoy as --config-yaml.
type generatedSidecar struct {
	Deployment        string          `json:"deployment"`
	Bootstrap         json.RawMessage `json:"bootstrap"`
	BootstrapOverride string          `json:"bootstrap_override,omitempty"`
	OverrideJSON      json.RawMessage `json:"override,omitempty"`
}

func generateSidecar(inj *injection, d *appsv1.Deployment, cms map[string]*corev1.ConfigMap, template string) (*generatedSidecar, error) {
	pod, err := injectPod(inj, d)
	if err != nil {
		return nil, err
	}
	c, err := proxyContainer(pod)
	if err != nil {
		return nil, err
	}
	env := containerEnv(pod, c)
	// pilot/cmd/pilot-agent/app/cmd.go: the ProxyConfig comes from the mesh config file (none
	// here: the injector already merged meshConfig.defaultConfig and the pod's
	// proxy.istio.io/config annotation into PROXY_CONFIG) and PROXY_CONFIG.
	proxyConfig, err := agentconfig.ConstructProxyConfig("", "", env["PROXY_CONFIG"], 0)
	if err != nil {
		return nil, fmt.Errorf("proxy config: %w", err)
	}
	var envs []string
	for k, v := range env {
		envs = append(envs, k+"="+v)
	}
	ip := fieldValue(pod, "status.podIP")
	node, err := bootstrap.GetNodeMetaData(bootstrap.MetadataOptions{
		ID:          fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.cluster.local", ip, pod.Name, pod.Namespace, pod.Namespace),
		Envs:        envs,
		InstanceIPs: []string{ip},
		ProxyConfig: proxyConfig,
		// pilot-agent's defaults (pkg/istio-agent, pilot/cmd/pilot-agent/options).
		EnvoyStatusPort:     15021,
		EnvoyPrometheusPort: 15090,
	})
	if err != nil {
		return nil, fmt.Errorf("node metadata: %w", err)
	}
	var buf bytes.Buffer
	if err := bootstrap.New(bootstrap.Config{Node: node}).WriteTo(template, &buf); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	out := &generatedSidecar{Deployment: d.Name, Bootstrap: buf.Bytes()}
	if path := env["ISTIO_BOOTSTRAP_OVERRIDE"]; path != "" {
		content, err := mountedFile(pod, c, cms, path)
		if err != nil {
			return nil, err
		}
		// pkg/envoy/proxy.go readBootstrapToJSON: YAML or JSON, converted to JSON.
		js, err := sigyaml.YAMLToJSON([]byte(content))
		if err != nil {
			return nil, fmt.Errorf("bootstrap override: %w", err)
		}
		out.BootstrapOverride = path
		out.OverrideJSON = js
	}
	return out, nil
}

func statsOf(inj *injection, d *appsv1.Deployment, cms map[string]*corev1.ConfigMap, template string) (*sidecarStats, error) {
	gen, err := generateSidecar(inj, d, cms, template)
	if err != nil {
		return nil, err
	}
	var generated struct {
		StatsConfig json.RawMessage `json:"stats_config"`
	}
	if err := json.Unmarshal(gen.Bootstrap, &generated); err != nil {
		return nil, fmt.Errorf("generated bootstrap is not JSON: %w", err)
	}
	stats := &metricsv3.StatsConfig{}
	if err := protojson.Unmarshal(generated.StatsConfig, stats); err != nil {
		return nil, fmt.Errorf("generated stats_config: %w", err)
	}
	result := &sidecarStats{Deployment: d.Name}
	if gen.BootstrapOverride != "" {
		override := &bootstrapv3.Bootstrap{}
		if err := protojson.Unmarshal(gen.OverrideJSON, override); err != nil {
			return nil, fmt.Errorf("bootstrap override is not an Envoy Bootstrap: %w", err)
		}
		if err := override.ValidateAll(); err != nil {
			return nil, fmt.Errorf("bootstrap override fails Envoy's field validation: %w", err)
		}
		if override.StatsConfig != nil {
			proto.Merge(stats, override.StatsConfig)
		}
		result.BootstrapOverride = gen.BootstrapOverride
	}
	if err := stats.ValidateAll(); err != nil {
		return nil, fmt.Errorf("merged stats_config fails Envoy's field validation: %w", err)
	}
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(stats)
	if err != nil {
		return nil, err
	}
	result.StatsConfig = b
	return result, nil
}

// cmdSidecarBootstrap prints, for every Deployment in FILE, the generated bootstrap and the
// bootstrap override, for tests that start Envoy itself with them.
func cmdSidecarBootstrap(args []string) error {
	var out []generatedSidecar
	err := forEachSidecar("sidecar-bootstrap", args, func(inj *injection, d *appsv1.Deployment, cms map[string]*corev1.ConfigMap, template string) error {
		g, err := generateSidecar(inj, d, cms, template)
		if err == nil {
			out = append(out, *g)
		}
		return err
	})
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// forEachSidecar parses `[--template PATH] FILE` and calls each with the injector and every
// Deployment in FILE.
func forEachSidecar(name string, args []string, each func(*injection, *appsv1.Deployment, map[string]*corev1.ConfigMap, string) error) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	self, _ := os.Executable()
	template := fs.String("template", filepath.Join(filepath.Dir(self), "envoy_bootstrap.json"),
		"Istio's bootstrap template (the proxy image's /var/lib/istio/envoy/envoy_bootstrap_tmpl.json)")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		usage()
	}
	objs, err := readObjects(fs.Arg(0))
	if err != nil {
		return err
	}
	inj, err := loadInjection(false)
	if err != nil {
		return err
	}
	for _, d := range objs.deployments {
		if err := each(inj, d, objs.configMaps, *template); err != nil {
			return fmt.Errorf("%s: %w", d.Name, err)
		}
	}
	return nil
}

func cmdValidate(args []string) error {
	if len(args) != 1 {
		usage()
	}
	ctx := cli.NewFakeContext(&cli.NewFakeContextOption{IstioNamespace: "istio-system"})
	cmd := validate.NewValidateCommand(ctx)
	cmd.SetArgs([]string{"-f", args[0]})
	cmd.SetOut(os.Stdout)
	cmd.SetErr(os.Stdout)
	cmd.SilenceUsage = true
	return cmd.Execute()
}

func cmdFetch(args []string) error {
	fs := flag.NewFlagSet("fetch", flag.ContinueOnError)
	insecure := fs.Bool("insecure", false, "the registry serves plain HTTP (the agent's WASM_INSECURE_REGISTRIES)")
	pullSecret := fs.String("pull-secret", "", "a docker config JSON file: the WasmPlugin's imagePullSecret as the agent gets it")
	if err := fs.Parse(args); err != nil || fs.NArg() != 3 {
		usage()
	}
	url, sha, dest := fs.Arg(0), fs.Arg(1), fs.Arg(2)
	dir, err := os.MkdirTemp("", "meshguard-wasm-cache-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	opts := wasm.Options{
		PurgeInterval:         wasm.DefaultPurgeInterval,
		ModuleExpiry:          wasm.DefaultModuleExpiry,
		InsecureRegistries:    sets.New[string](),
		HTTPRequestTimeout:    wasm.DefaultHTTPRequestTimeout,
		HTTPRequestMaxRetries: wasm.DefaultHTTPRequestMaxRetries,
	}
	if *insecure {
		opts.InsecureRegistries.Insert("*")
	}
	get := wasm.GetOptions{
		Checksum:       sha,
		ResourceName:   "meshguard",
		RequestTimeout: 30 * time.Second,
		PullPolicy:     wasm.IfNotPresent,
	}
	if *pullSecret != "" {
		secret, err := os.ReadFile(*pullSecret)
		if err != nil {
			return err
		}
		get.PullSecret = secret
	}
	cache := wasm.NewLocalFileCache(dir, opts)
	defer cache.Cleanup()
	path, err := cache.Get(url, get)
	if err != nil {
		return err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return os.WriteFile(dest, b, 0o644)
}
