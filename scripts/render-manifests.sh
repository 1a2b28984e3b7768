#!/usr/bin/env bash
# Regenerate the files derived from the chart, so that they never drift:
#
#   charts/logroute/crds/logroute.dev_logroutes.yaml  byte copy of crds/ (which
#                                                     `logroute crd` generates)
#   manifests/logroute.yaml                           `helm template` of charts/logroute
#                                                     with default values, for users
#                                                     without Helm
#
# Usage: scripts/render-manifests.sh            rewrite both files
#        scripts/render-manifests.sh --stdout   print the manifests only (tests/chart.rs
#                                               compares this with manifests/logroute.yaml)
#        scripts/render-manifests.sh --check    exit 1 when a file is stale
#
# helm: $HELM, else .tools/bin/helm (scripts/install-tools.sh), else helm on PATH.
# The output depends on the helm version; the pinned one is 3.17.2.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
chart="$repo/charts/logroute"
crd_name=logroute.dev_logroutes.yaml
namespace=logroute-system
release=logroute

helm="${HELM:-}"
if [[ -z "$helm" ]]; then
  if [[ -x "$repo/.tools/bin/helm" ]]; then helm="$repo/.tools/bin/helm"; else helm=helm; fi
fi
command -v "$helm" >/dev/null || {
  echo "render-manifests.sh: helm not found; run scripts/install-tools.sh" >&2
  exit 1
}

render() {
  local app_version
  app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$chart/Chart.yaml")"
  cat <<EOF
# logroute $app_version for \`kubectl apply --server-side -f manifests/\` (no Helm needed).
# Generated from charts/logroute with default values by scripts/render-manifests.sh;
# do not edit: change the chart and run the script. Namespace: $namespace.
---
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
  labels:
    app.kubernetes.io/name: logroute
    # The agent mounts hostPath volumes (the Docker socket, its checkpoint directory),
    # which the baseline and restricted Pod Security levels refuse.
    pod-security.kubernetes.io/enforce: privileged
EOF
  "$helm" template "$release" "$chart" --namespace "$namespace" --include-crds
}

case "${1:-}" in
  --stdout)
    render
    ;;
  --check)
    stale=0
    cmp -s "$repo/crds/$crd_name" "$chart/crds/$crd_name" || {
      echo "charts/logroute/crds/$crd_name differs from crds/$crd_name" >&2
      stale=1
    }
    render | cmp -s - "$repo/manifests/logroute.yaml" || {
      echo "manifests/logroute.yaml differs from the rendered chart" >&2
      stale=1
    }
    if [[ $stale -ne 0 ]]; then
      echo "run scripts/render-manifests.sh and commit the result" >&2
      exit 1
    fi
    ;;
  "")
    mkdir -p "$chart/crds" "$repo/manifests"
    cp "$repo/crds/$crd_name" "$chart/crds/$crd_name"
    render > "$repo/manifests/logroute.yaml.tmp"
    mv "$repo/manifests/logroute.yaml.tmp" "$repo/manifests/logroute.yaml"
    echo "wrote charts/logroute/crds/$crd_name and manifests/logroute.yaml"
    ;;
  *)
    echo "render-manifests.sh: unknown argument $1 (use --stdout or --check)" >&2
    exit 2
    ;;
esac
