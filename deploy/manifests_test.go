package deploy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

const k8sDir = "k8s"

// strictDecoder decodes the API groups the manifests use; unknown and duplicate fields are
// errors, as `kubectl apply --validate=strict` would report them.
func strictDecoder(t *testing.T) runtime.Decoder {
	t.Helper()
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}

// kustomization is the part of kustomize's Kustomization these manifests use; decoding it
// strictly makes any other field (a typo, or a feature the tests do not know) fail.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images,omitempty"`
}

func readKustomization(t *testing.T) kustomization {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	return k
}

// documents splits a YAML stream on its "---" separator lines, dropping empty documents.
func documents(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(data), -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(d, "")) != "" {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

// manifests decodes every resource the kustomization lists.
type manifests struct {
	sts      *appsv1.StatefulSet
	services map[string]*corev1.Service
	pdb      *policyv1.PodDisruptionBudget
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	dec := strictDecoder(t)
	m := manifests{services: map[string]*corev1.Service{}}
	for _, res := range readKustomization(t).Resources {
		data, err := os.ReadFile(filepath.Join(k8sDir, res))
		if err != nil {
			t.Fatalf("kustomization lists %s: %v", res, err)
		}
		docs := documents(data)
		if len(docs) == 0 {
			t.Fatalf("%s holds no object", res)
		}
		for i, doc := range docs {
			obj, gvk, err := dec.Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("%s document %d does not decode strictly: %v", res, i, err)
			}
			switch o := obj.(type) {
			case *appsv1.StatefulSet:
				if m.sts != nil {
					t.Fatalf("%s: a second StatefulSet", res)
				}
				m.sts = o
			case *corev1.Service:
				m.services[o.Name] = o
			case *policyv1.PodDisruptionBudget:
				m.pdb = o
			default:
				t.Fatalf("%s: unexpected kind %s", res, gvk)
			}
		}
	}
	if m.sts == nil || m.pdb == nil || len(m.services) != 2 {
		t.Fatalf("want one StatefulSet, two Services and one PodDisruptionBudget; got sts=%v services=%d pdb=%v", m.sts != nil, len(m.services), m.pdb != nil)
	}
	return m
}

func TestKustomizationListsEveryManifest(t *testing.T) {
	k := readKustomization(t)
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("kustomization.yaml is %s %s", k.APIVersion, k.Kind)
	}
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.y*ml"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			want = append(want, b)
		}
	}
	got := slices.Clone(k.Resources)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("kustomization resources %v, manifest files %v: every file must be listed once", got, want)
	}
	for _, img := range k.Images {
		if img.Name != "wsregistry" {
			t.Errorf("kustomization rewrites image %q, which no manifest uses", img.Name)
		}
	}
}

func TestManifestsDecodeStrictly(t *testing.T) {
	m := loadManifests(t)
	for _, meta := range []string{m.sts.Name, m.pdb.Name} {
		if errs := validation.IsDNS1123Subdomain(meta); len(errs) > 0 {
			t.Errorf("name %q: %v", meta, errs)
		}
	}
	for name := range m.services {
		if errs := validation.IsDNS1035Label(name); len(errs) > 0 {
			t.Errorf("service name %q: %v", name, errs)
		}
	}
}

// The decoder must really be strict, or the test above proves nothing.
func TestStrictDecoderRefusesUnknownAndDuplicateFields(t *testing.T) {
	dec := strictDecoder(t)
	data, err := os.ReadFile(filepath.Join(k8sDir, "statefulset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func([]byte) []byte{
		"unknown field": func(b []byte) []byte {
			return bytes.Replace(b, []byte("\n  replicas: 3"), []byte("\n  replicas: 3\n  replica: 3"), 1)
		},
		"duplicate field": func(b []byte) []byte {
			return bytes.Replace(b, []byte("\n  replicas: 3"), []byte("\n  replicas: 3\n  replicas: 4"), 1)
		},
	} {
		bad := edit(data)
		if bytes.Equal(bad, data) {
			t.Fatalf("%s: the edit did not apply; update the test", name)
		}
		if _, _, err := dec.Decode(bad, nil, nil); err == nil || !runtime.IsStrictDecodingError(err) {
			t.Errorf("%s: decoded without a strict decoding error (err=%v)", name, err)
		}
	}
}

func container(t *testing.T, sts *appsv1.StatefulSet) corev1.Container {
	t.Helper()
	cs := sts.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("want one container, got %d", len(cs))
	}
	return cs[0]
}

func containerPort(t *testing.T, c corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort
		}
	}
	t.Fatalf("port %s is not a container port", p.String())
	return 0
}

func TestStatefulSetShape(t *testing.T) {
	m := loadManifests(t)
	sts := m.sts
	spec := sts.Spec
	if spec.Replicas == nil || *spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", spec.Replicas)
	}
	if spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("podManagementPolicy %q, want Parallel", spec.PodManagementPolicy)
	}
	sel, err := metaSelector(spec.Selector.MatchLabels)
	if err != nil {
		t.Fatal(err)
	}
	podLabels := labels.Set(spec.Template.Labels)
	if !sel.Matches(podLabels) {
		t.Errorf("selector %v does not match the pod labels %v", sel, podLabels)
	}
	if len(spec.VolumeClaimTemplates) != 1 {
		t.Fatalf("want one volumeClaimTemplate, got %d", len(spec.VolumeClaimTemplates))
	}
	if q, ok := spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage]; !ok || q.IsZero() {
		t.Errorf("the volume claim requests no storage")
	}
	pod := spec.Template.Spec
	if pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds < 35 {
		t.Errorf("terminationGracePeriodSeconds %v: must cover the 30 s preStop leave", pod.TerminationGracePeriodSeconds)
	}
	if pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil ||
		len(pod.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Fatal("no pod anti-affinity")
	}
	for _, term := range pod.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
		s, err := metaSelector(term.LabelSelector.MatchLabels)
		if err != nil {
			t.Fatal(err)
		}
		if !s.Matches(podLabels) || term.TopologyKey != corev1.LabelHostname {
			t.Errorf("anti-affinity term %+v does not keep the pods on different hosts", term)
		}
	}
	ann := spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/path"] != "/metrics" || ann["prometheus.io/port"] != "8428" {
		t.Errorf("prometheus annotations %v", ann)
	}

	c := container(t, sts)
	for _, cp := range c.Ports {
		if errs := validation.IsValidPortName(cp.Name); len(errs) > 0 {
			t.Errorf("port name %q: %v", cp.Name, errs)
		}
	}
	probes := map[string]*corev1.Probe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe}
	for path, p := range probes {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || containerPort(t, c, p.HTTPGet.Port) != 8428 {
			t.Errorf("probe for %s: %+v", path, p)
		}
	}
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Exec == nil ||
		!slices.Contains(c.Lifecycle.PreStop.Exec.Command, "--leave") {
		t.Errorf("preStop does not make the node leave: %+v", c.Lifecycle)
	} else if cmd := c.Lifecycle.PreStop.Exec.Command; len(cmd) < 2 || cmd[1] != "drain" {
		// Without the drain, a rolling update leaves each pod's agents unfindable until
		// they re-register, and the pod restarted last with none.
		t.Errorf("preStop does not drain the node before it leaves: %q", cmd)
	}
	var mounted bool
	for _, vm := range c.VolumeMounts {
		mounted = mounted || vm.Name == spec.VolumeClaimTemplates[0].Name
	}
	if !mounted {
		t.Errorf("the claim %q is not mounted", spec.VolumeClaimTemplates[0].Name)
	}
	// Every pod runs the same command: nothing in it may name one pod.
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		if regexp.MustCompile(sts.Name+`-\d+(\.|$)`).MatchString(a) && !strings.Contains(a, "--join=") {
			t.Errorf("argument %q names one pod", a)
		}
	}
}

func metaSelector(ml map[string]string) (labels.Selector, error) {
	if len(ml) == 0 {
		return nil, fmt.Errorf("empty selector")
	}
	return labels.SelectorFromSet(ml), nil
}

func TestServicesAndBudget(t *testing.T) {
	m := loadManifests(t)
	c := container(t, m.sts)
	podLabels := labels.Set(m.sts.Spec.Template.Labels)

	peers, ok := m.services[m.sts.Spec.ServiceName]
	if !ok {
		t.Fatalf("the StatefulSet's serviceName %q is not among the Services", m.sts.Spec.ServiceName)
	}
	if peers.Spec.ClusterIP != corev1.ClusterIPNone || !peers.Spec.PublishNotReadyAddresses {
		t.Errorf("peer Service %s: clusterIP %q, publishNotReadyAddresses %v; want headless and publishing not-ready pods",
			peers.Name, peers.Spec.ClusterIP, peers.Spec.PublishNotReadyAddresses)
	}
	var client *corev1.Service
	for name, s := range m.services {
		if name != peers.Name {
			client = s
		}
	}
	ports := map[int32]int32{}
	for _, p := range client.Spec.Ports {
		ports[p.Port] = containerPort(t, c, p.TargetPort)
	}
	if ports[8427] != 8427 || ports[8428] != 8428 || len(ports) != 2 {
		t.Errorf("client Service %s ports %v, want 8427 (agents) and 8428 (HTTP)", client.Name, ports)
	}
	for _, s := range m.services {
		if !labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) || len(s.Spec.Selector) == 0 {
			t.Errorf("Service %s selector %v does not select the pods %v", s.Name, s.Spec.Selector, podLabels)
		}
		for _, p := range s.Spec.Ports {
			containerPort(t, c, p.TargetPort)
		}
	}

	pdb := m.pdb.Spec
	if pdb.MaxUnavailable == nil || pdb.MaxUnavailable.String() != "1" || pdb.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget maxUnavailable %v minAvailable %v, want maxUnavailable 1", pdb.MaxUnavailable, pdb.MinAvailable)
	}
	if pdb.Selector == nil || !labels.SelectorFromSet(pdb.Selector.MatchLabels).Matches(podLabels) {
		t.Errorf("PodDisruptionBudget selector %v does not select the pods", pdb.Selector)
	}
}

// The Secret the pods need: Kubernetes starts no pod until it exists.
const (
	secretName       = "wsregistry"
	secretKeyCluster = "cluster-key"
	secretKeyAdmin   = "admin-token"
)

// Pods talk over the pod network, not loopback: without the cluster key they would refuse each
// other (or, with --cluster-insecure, accept anyone), and the preStop leave from the pod IP
// needs the admin token. So both come from a Secret that must exist.
func TestStatefulSetRequiresTheSecret(t *testing.T) {
	c := container(t, loadManifests(t).sts)
	want := map[string]string{"WSREGISTRY_CLUSTER_KEY": secretKeyCluster, "WSREGISTRY_ADMIN_TOKEN": secretKeyAdmin}
	seen := map[string]bool{}
	for _, e := range c.Env {
		key, ok := want[e.Name]
		if !ok {
			continue
		}
		seen[e.Name] = true
		if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("env %s must come from the Secret %s (key %s), not %+v", e.Name, secretName, key, e)
			continue
		}
		ref := e.ValueFrom.SecretKeyRef
		if ref.Name != secretName || ref.Key != key {
			t.Errorf("env %s comes from Secret %q key %q, want %q key %q", e.Name, ref.Name, ref.Key, secretName, key)
		}
		if ref.Optional == nil {
			t.Errorf("env %s: write optional: false out, so the Secret is visibly required", e.Name)
		} else if *ref.Optional {
			t.Errorf("env %s: optional: true lets the pods run without the Secret; want optional: false", e.Name)
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("no env %s: the pods would run without it", name)
		}
	}
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--cluster-insecure") || strings.HasPrefix(a, "--cluster-key") || strings.HasPrefix(a, "--admin-token") {
			t.Errorf("argument %q: secrets come from the Secret only, and peers are never accepted without it", a)
		}
	}
}

// flagValue is the value of the container's one --name=value argument.
func flagValue(t *testing.T, c corev1.Container, name string) string {
	t.Helper()
	var v string
	n := 0
	for _, a := range c.Args {
		if rest, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			v, n = rest, n+1
		}
	}
	if n != 1 {
		t.Fatalf("want one --%s=..., found %d in %v", name, n, c.Args)
	}
	return v
}

func intFlag(t *testing.T, c corev1.Container, name string) int {
	t.Helper()
	v, err := strconv.Atoi(flagValue(t, c, name))
	if err != nil {
		t.Fatalf("--%s: %v", name, err)
	}
	return v
}

// --join takes peers' peer-port addresses: the stable DNS names of the pods that form the
// cluster (the first --bootstrap-expect replicas) on the headless Service, at the port the
// container listens on with --raft-addr, which that Service publishes.
func TestJoinNamesTheFormingPodsOnThePeerPort(t *testing.T) {
	m := loadManifests(t)
	c := container(t, m.sts)
	_, raftPort, ok := strings.Cut(flagValue(t, c, "raft-addr"), ":")
	if !ok {
		t.Fatalf("--raft-addr %q has no port", flagValue(t, c, "raft-addr"))
	}
	peerPort := containerPort(t, c, intstr.FromString("peer"))
	if raftPort != fmt.Sprint(peerPort) {
		t.Errorf("--raft-addr port %s, but the container port named peer is %d", raftPort, peerPort)
	}
	var want []string
	for i := range intFlag(t, c, "bootstrap-expect") {
		want = append(want, fmt.Sprintf("%s-%d.%s:%d", m.sts.Name, i, m.sts.Spec.ServiceName, peerPort))
	}
	if got := strings.Split(flagValue(t, c, "join"), ","); !slices.Equal(got, want) {
		t.Errorf("--join=%s, want %s: the peer-port address (not the HTTP port) of every pod that forms the cluster", strings.Join(got, ","), strings.Join(want, ","))
	}
	peers := m.services[m.sts.Spec.ServiceName]
	if peers == nil {
		t.Fatalf("no Service %q", m.sts.Spec.ServiceName)
	}
	published := false
	for _, p := range peers.Spec.Ports {
		published = published || (p.Port == peerPort && containerPort(t, c, p.TargetPort) == peerPort)
	}
	if !published {
		t.Errorf("the headless Service %s does not publish the peer port %d: %+v", peers.Name, peerPort, peers.Spec.Ports)
	}
}

// The first --bootstrap-expect pods form the cluster and all of them vote; a StatefulSet
// scaled past them (5, 7 replicas) gains non-voters with no change to the pod template: every
// later pod joins through pods that exist at any scale, and the leader keeps --voters voters.
// Scaled down, each pod's preStop drains it and makes it leave the configuration.
func TestScalingOutAddsNonVotersWithoutATemplateChange(t *testing.T) {
	m := loadManifests(t)
	c := container(t, m.sts)
	replicas := int(*m.sts.Spec.Replicas)
	expect, voters := intFlag(t, c, "bootstrap-expect"), intFlag(t, c, "voters")
	if voters%2 == 0 {
		t.Errorf("--voters=%d: an even number of voters adds one to every quorum and no fault tolerance", voters)
	}
	if expect != voters {
		// More would make some of the forming pods non-voters from the start; fewer would
		// form the cluster before every voter is there.
		t.Errorf("--bootstrap-expect=%d, --voters=%d: the pods that form the cluster should be exactly its voters", expect, voters)
	}
	if replicas != expect {
		t.Errorf("replicas %d, --bootstrap-expect=%d: the StatefulSet is created with the pods that form the cluster; more are added by scaling it", replicas, expect)
	}
	for _, scale := range []int{3, 5, 7} {
		for _, peer := range strings.Split(flagValue(t, c, "join"), ",") {
			host, _, _ := strings.Cut(peer, ".")
			i, err := strconv.Atoi(strings.TrimPrefix(host, m.sts.Name+"-"))
			if err != nil || i >= scale {
				t.Errorf("at %d replicas, --join names %s, which is not one of the pods", scale, peer)
			}
		}
	}
	pre := c.Lifecycle
	if pre == nil || pre.PreStop == nil || pre.PreStop.Exec == nil || !slices.Contains(pre.PreStop.Exec.Command, "--leave") {
		t.Errorf("preStop does not make a removed pod leave the configuration: %+v", pre)
	}
}
