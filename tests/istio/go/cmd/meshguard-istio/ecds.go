package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	meshconfig "istio.io/api/mesh/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pilot/pkg/config/kube/extensions"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/networking/core"
	"istio.io/istio/pilot/pkg/serviceregistry/kube"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/constants"
	"istio.io/istio/pkg/config/labels"
	"istio.io/istio/pkg/test"
	"istio.io/istio/pkg/wasm"
	"istio.io/istio/pkg/wellknown"
)

// generatedFilters is what istiod and the agent hand one Deployment's sidecar for its inbound
// HTTP traffic: the HTTP filters of each inbound filter chain of the Deployment's Service ports,
// in order, and the ECDS resources those filters name, as the agent forwards them to Envoy.
type generatedFilters struct {
	Deployment       string            `json:"deployment"`
	Chains           []inboundChain    `json:"chains"`
	ExtensionConfigs []json.RawMessage `json:"extension_configs"`
}

type inboundChain struct {
	Name        string          `json:"name"`
	Match       json.RawMessage `json:"match"`
	HTTPFilters []httpFilter    `json:"http_filters"`
}

type httpFilter struct {
	Name string `json:"name"`
	// The type URLs the filter accepts when its configuration comes from discovery (ECDS).
	TypeURLs []string `json:"type_urls,omitempty"`
}

// moduleCache is the agent's module cache (pkg/wasm Cache) for modules already on disk: a module
// URL resolves to the local file a test built, where the agent would download it (what that
// download does is what `fetch` runs).
type moduleCache map[string]string

func (m moduleCache) Get(url string, _ wasm.GetOptions) (string, error) {
	if path, ok := m[url]; ok {
		return path, nil
	}
	return "", fmt.Errorf("no local module for %s (pass --module %s=PATH)", url, url)
}

func (m moduleCache) Cleanup() {}

// cmdSidecarECDS: for every Deployment in FILE, the inbound listener Istio's pilot
// (pilot/pkg/networking/core, the code istiod runs) builds for the Deployment's sidecar from the
// rendered Istio configuration and Services, and the ECDS resources it serves for the listener's
// Wasm filters (BuildExtensionConfiguration), after the agent's rewrite of each module URL to a
// local file (pkg/wasm MaybeConvertWasmExtensionConfig, as pkg/istio-agent/xds_proxy.go calls it).
// WasmPlugins reach pilot as istiod's config controller registers them: through the
// WasmPlugin → TrafficExtension translation controller (pilot/pkg/config/kube/extensions).
func cmdSidecarECDS(args []string) error {
	fs := flag.NewFlagSet("sidecar-ecds", flag.ContinueOnError)
	modules := moduleCache{}
	fs.Func("module", "URL=PATH: the local file of a module URL (repeatable)", func(s string) error {
		url, path, ok := strings.Cut(s, "=")
		if !ok {
			return errors.New("want URL=PATH")
		}
		modules[url] = path
		return nil
	})
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		usage()
	}
	raw, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	objs, err := readObjects(fs.Arg(0))
	if err != nil {
		return err
	}
	// Istio's own kinds (WasmPlugin, PeerAuthentication, ...) as istiod's config store holds them,
	// validated; the Kubernetes kinds are skipped here, and the Services go to the registry.
	configs, _, err := crd.ParseInputs(string(raw))
	if err != nil {
		return err
	}
	// The mesh config `istioctl install` renders (the istio ConfigMap of the istio-discovery chart).
	inj, err := loadInjection(false)
	if err != nil {
		return err
	}
	var out []generatedFilters
	for i, d := range objs.deployments {
		var g *generatedFilters
		err := test.Wrap(func(t test.Failer) {
			g, err = generatedFor(t, d, objs.services, configs, inj.mesh, modules, fmt.Sprintf("10.1.0.%d", i+10))
		})
		if err == nil && g == nil {
			err = errors.New("no result")
		}
		if err != nil {
			return fmt.Errorf("%s: %w", d.Name, err)
		}
		out = append(out, *g)
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}

// generatedFor runs pilot for one Deployment's pod at `ip`.
func generatedFor(t test.Failer, d *appsv1.Deployment, services []*corev1.Service, configs []config.Config,
	mc *meshconfig.MeshConfig, modules moduleCache, ip string,
) (*generatedFilters, error) {
	ns := d.Namespace
	podLabels := labels.Instance(d.Spec.Template.Labels)
	sa := d.Spec.Template.Spec.ServiceAccountName
	var svcs []*model.Service
	var instances []*model.ServiceInstance
	for _, s := range services {
		if s.Namespace != ns || len(s.Spec.Selector) == 0 || !labels.Instance(s.Spec.Selector).SubsetOf(podLabels) {
			continue
		}
		// The Kubernetes registry's own conversion of a Service (ports, protocols from appProtocol).
		svc := kube.ConvertService(*s, nil, constants.DefaultClusterLocalDomain, "Kubernetes", "cluster.local")
		svcs = append(svcs, svc)
		for i, p := range s.Spec.Ports {
			target, err := containerPort(d, p)
			if err != nil {
				return nil, err
			}
			port := svc.Ports[i]
			instances = append(instances, &model.ServiceInstance{
				Service:     svc,
				ServicePort: port,
				Endpoint: &model.IstioEndpoint{
					Addresses:       []string{ip},
					EndpointPort:    target,
					ServicePortName: port.Name,
					Labels:          podLabels,
					Namespace:       ns,
					ServiceAccount:  fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", ns, sa),
					WorkloadName:    d.Name,
					TLSMode:         model.IstioMutualTLSModeLabel,
				},
			})
		}
	}
	if len(instances) == 0 {
		return nil, errors.New("no Service selects its pods")
	}
	cg := core.NewConfigGenTest(t, core.TestOptions{
		Configs:    configs,
		Services:   svcs,
		Instances:  instances,
		MeshConfig: mc,
		// istiod's config controller (pilot/pkg/bootstrap/configcontroller.go initK8SConfigStore).
		CreateConfigStore: func(c model.ConfigStoreController) model.ConfigStoreController {
			return extensions.NewController(c, nil, nil)
		},
	})
	proxy := cg.SetupProxy(&model.Proxy{
		ID:              fmt.Sprintf("%s-0.%s", d.Name, ns),
		IPAddresses:     []string{ip},
		ConfigNamespace: ns,
		Labels:          podLabels,
		Metadata: &model.NodeMetadata{
			Namespace:      ns,
			Labels:         podLabels,
			WorkloadName:   d.Name,
			ServiceAccount: sa,
		},
	})
	out := &generatedFilters{Deployment: d.Name}
	var ecdsNames []string
	for _, l := range cg.Listeners(proxy) {
		if l.Name != model.VirtualInboundListenerName {
			continue
		}
		for _, fc := range l.FilterChains {
			chain, names, err := httpChain(fc)
			if err != nil {
				return nil, err
			}
			if chain == nil || !onPorts(fc, instances) {
				continue
			}
			out.Chains = append(out.Chains, *chain)
			ecdsNames = append(ecdsNames, names...)
		}
	}
	if len(out.Chains) == 0 {
		return nil, errors.New("pilot built no inbound HTTP filter chain for its Service ports")
	}
	ecds := cg.ConfigGen.BuildExtensionConfiguration(proxy, cg.PushContext(), dedupe(ecdsNames), nil)
	resources := make([]*anypb.Any, 0, len(ecds))
	for _, ec := range ecds {
		a, err := anypb.New(ec)
		if err != nil {
			return nil, err
		}
		resources = append(resources, a)
	}
	if err := wasm.MaybeConvertWasmExtensionConfig(resources, modules); err != nil {
		return nil, fmt.Errorf("the agent's module conversion: %w", err)
	}
	for _, a := range resources {
		js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(a)
		if err != nil {
			return nil, err
		}
		out.ExtensionConfigs = append(out.ExtensionConfigs, js)
	}
	return out, nil
}

// httpChain is a filter chain's HTTP connection manager filters (nil without one) and the names
// of those configured by discovery.
func httpChain(fc *listenerv3.FilterChain) (*inboundChain, []string, error) {
	for _, f := range fc.Filters {
		if f.Name != wellknown.HTTPConnectionManager {
			continue
		}
		m := &hcm.HttpConnectionManager{}
		if err := f.GetTypedConfig().UnmarshalTo(m); err != nil {
			return nil, nil, err
		}
		match, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(fc.GetFilterChainMatch())
		if err != nil {
			return nil, nil, err
		}
		chain := &inboundChain{Name: fc.Name, Match: match}
		var names []string
		for _, h := range m.HttpFilters {
			hf := httpFilter{Name: h.Name}
			if cd := h.GetConfigDiscovery(); cd != nil {
				hf.TypeURLs = cd.TypeUrls
				names = append(names, h.Name)
			}
			chain.HTTPFilters = append(chain.HTTPFilters, hf)
		}
		return chain, names, nil
	}
	return nil, nil, nil
}

// onPorts: the chain serves one of the instances' target ports.
func onPorts(fc *listenerv3.FilterChain, instances []*model.ServiceInstance) bool {
	port := fc.GetFilterChainMatch().GetDestinationPort().GetValue()
	for _, i := range instances {
		if port == i.Endpoint.EndpointPort {
			return true
		}
	}
	return false
}

func dedupe(names []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// containerPort resolves a Service port's targetPort in the Deployment's pod template.
func containerPort(d *appsv1.Deployment, p corev1.ServicePort) (uint32, error) {
	if p.TargetPort.IntVal != 0 {
		return uint32(p.TargetPort.IntVal), nil
	}
	name := p.TargetPort.StrVal
	if name == "" {
		return uint32(p.Port), nil
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == name {
				return uint32(cp.ContainerPort), nil
			}
		}
	}
	return 0, fmt.Errorf("targetPort %q names no container port", name)
}
