// Package deploy holds no code: its tests check the deployment files next to it. The
// Kubernetes manifests in k8s/ must decode strictly into k8s.io/api types and be listed by
// the kustomization, and three local wsregistry processes started exactly as the
// StatefulSet starts its pods must form one cluster. It is a module of its own so that the
// main module does not depend on k8s.io/api; run it with `cd deploy && go test ./...`
// (scripts/suites/25-k8s-manifests.sh).
package deploy
