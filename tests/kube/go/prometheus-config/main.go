// meshguard-prometheus-config: the Prometheus Operator's own configuration generator
// (github.com/prometheus-operator/prometheus-operator, pinned in versions.env), run once on
// the local cluster's PodMonitors. It selects and validates them as the operator does for a
// Prometheus object whose podMonitorSelector and podMonitorNamespaceSelector are empty (what
// kube-prometheus-stack renders with podMonitorSelectorNilUsesHelmValues=false: every
// PodMonitor in every namespace), generates the server configuration with the local cluster's
// own jobs as additional scrape configs, and writes it to --out.
//
// It also does what the operator's config reloader (prometheus-config-reloader, a container of
// the Prometheus pod) does to the file before Prometheus reads it: it expands $(SHARD), which
// the operator's sharding relabelling names, to this Prometheus' shard, 0 (the operator sets
// the variable in the pod; without it the relabelling keeps no target).
//
// One difference from a Prometheus the operator runs as a pod: this Prometheus runs on the
// host, so every kubernetes_sd_config gets --kubeconfig as its kubeconfig_file (the operator's
// configuration leaves it out and relies on the pod's service account).
//
// Usage:
//
//	meshguard-prometheus-config --kubeconfig FILE --additional FILE --out FILE \
//	    [--prometheus-version v3.16.0] [--scrape-interval 15s]
//
// It prints each PodMonitor it selected, and each it rejected with the operator's reason, on
// stderr; a rejected PodMonitor makes it exit 1 after writing the configuration.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus-operator/prometheus-operator/pkg/assets"
	monitoringclient "github.com/prometheus-operator/prometheus-operator/pkg/client/versioned"
	"github.com/prometheus-operator/prometheus-operator/pkg/operator"
	prompkg "github.com/prometheus-operator/prometheus-operator/pkg/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "meshguard-prometheus-config: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", "", "the cluster's kubeconfig (also Prometheus' kubeconfig_file)")
	additional := flag.String("additional", "", "a YAML list of scrape configs to add (the local cluster's own jobs)")
	out := flag.String("out", "", "where to write prometheus.yml")
	version := flag.String("prometheus-version", "v3.16.0", "the Prometheus version the configuration is for")
	interval := flag.String("scrape-interval", "15s", "the global scrape and evaluation interval")
	flag.Parse()
	if *kubeconfig == "" || *out == "" {
		return fmt.Errorf("--kubeconfig and --out are required")
	}
	var extra []byte
	if *additional != "" {
		b, err := os.ReadFile(*additional)
		if err != nil {
			return err
		}
		extra = b
	}

	restConfig, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("reading %s: %w", *kubeconfig, err)
	}
	kclient, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}
	mclient, err := monitoringclient.NewForConfig(restConfig)
	if err != nil {
		return err
	}

	empty := ""
	p := &monitoringv1.Prometheus{
		ObjectMeta: metav1.ObjectMeta{Name: "local", Namespace: "monitoring"},
		Spec: monitoringv1.PrometheusSpec{
			CommonPrometheusFields: monitoringv1.CommonPrometheusFields{
				Version:                     *version,
				ScrapeInterval:              monitoringv1.Duration(*interval),
				PodMonitorSelector:          &metav1.LabelSelector{},
				PodMonitorNamespaceSelector: &metav1.LabelSelector{},
				// The operator's external labels name the Prometheus object and its pod
				// ($(POD_NAME), filled in by its config reloader): neither exists here.
				ReplicaExternalLabelName:    &empty,
				PrometheusExternalLabelName: &empty,
			},
			EvaluationInterval: monitoringv1.Duration(*interval),
		},
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	factory := informers.NewSharedInformerFactory(kclient, 0)
	namespaces := factory.Core().V1().Namespaces().Informer()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), namespaces.HasSynced) {
		return fmt.Errorf("the namespaces never synced from the API server")
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store := assets.NewStoreBuilder(kclient.CoreV1(), kclient.CoreV1())
	selector, err := prompkg.NewResourceSelector(logger, p, store, namespaces,
		operator.NewMetrics(prometheus.NewRegistry()), operator.NewFakeRecorder(100, p))
	if err != nil {
		return err
	}
	list := func(namespace string, sel labels.Selector, appendFn cache.AppendFunc) error {
		got, err := mclient.MonitoringV1().PodMonitors(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
		if err != nil {
			return err
		}
		for i := range got.Items {
			appendFn(&got.Items[i])
		}
		return nil
	}
	selected, err := selector.SelectPodMonitors(ctx, list)
	if err != nil {
		return fmt.Errorf("selecting PodMonitors: %w", err)
	}
	keys := make([]string, 0, len(selected))
	for k := range selected {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	rejected := 0
	for _, k := range keys {
		r := selected[k]
		for _, c := range r.Conditions() {
			if c.Status == monitoringv1.ConditionTrue {
				fmt.Fprintf(os.Stderr, "PodMonitor %s: selected\n", k)
			} else {
				rejected++
				fmt.Fprintf(os.Stderr, "PodMonitor %s: rejected (%s): %s\n", k, c.Reason, c.Message)
			}
		}
	}

	cg, err := prompkg.NewConfigGenerator(logger, p)
	if err != nil {
		return err
	}
	generated, err := cg.GenerateServerConfiguration(p, nil, selected.ValidResources(), nil, nil,
		store, extra, nil, nil, nil)
	if err != nil {
		return fmt.Errorf("generating the configuration: %w", err)
	}
	// The config reloader's expansion of the operator's $(SHARD) (one shard: 0).
	generated = bytes.ReplaceAll(generated, []byte("$(SHARD)"), []byte("0"))
	if bytes.Contains(generated, []byte("$(")) {
		return fmt.Errorf("the generated configuration names a variable this Prometheus has no value for: %s", generated)
	}
	withKubeconfig, err := addKubeconfigFile(generated, *kubeconfig)
	if err != nil {
		return err
	}
	if err := os.WriteFile(*out, withKubeconfig, 0o644); err != nil {
		return err
	}
	if rejected > 0 {
		return fmt.Errorf("%d PodMonitor(s) rejected", rejected)
	}
	return nil
}

// addKubeconfigFile sets kubeconfig_file on every kubernetes_sd_config of every scrape config.
func addKubeconfigFile(config []byte, kubeconfig string) ([]byte, error) {
	var doc yaml.MapSlice
	if err := yaml.Unmarshal(config, &doc); err != nil {
		return nil, fmt.Errorf("reading the generated configuration: %w", err)
	}
	for i, item := range doc {
		if item.Key != "scrape_configs" {
			continue
		}
		jobs, ok := item.Value.([]interface{})
		if !ok {
			continue
		}
		for j, job := range jobs {
			fields, ok := job.(yaml.MapSlice)
			if !ok {
				continue
			}
			for k, field := range fields {
				if field.Key != "kubernetes_sd_configs" {
					continue
				}
				sds, ok := field.Value.([]interface{})
				if !ok {
					continue
				}
				for l, sd := range sds {
					if m, ok := sd.(yaml.MapSlice); ok {
						sds[l] = append(m, yaml.MapItem{Key: "kubeconfig_file", Value: kubeconfig})
					}
				}
				fields[k].Value = sds
			}
			jobs[j] = fields
		}
		doc[i].Value = jobs
	}
	return yaml.Marshal(doc)
}
