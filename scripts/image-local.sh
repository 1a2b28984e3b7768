#!/usr/bin/env bash
# Build the logroute runtime image from this machine's release build, without pulling
# anything: the same filesystem the Dockerfile's runtime stage gets (scripts/rootfs.sh),
# on `scratch`. Use it where base images cannot be pulled (kind, air-gapped hosts, this
# project's CI machines); the binary must come from a Debian 12 (glibc 2.36) or older
# system to run on the nodes' kernels as the Dockerfile's does.
#
# Usage: scripts/image-local.sh [TAG]     (default logroute:0.1.0); prints the image size.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-logroute:0.1.0}"
cargo build --release --locked --bin logroute
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
bash scripts/rootfs.sh target/release/logroute "$work/rootfs"
cat > "$work/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
USER 65532:65532
EXPOSE 9090 9091
ENTRYPOINT ["/usr/local/bin/logroute"]
CMD ["--help"]
DOCKERFILE
docker build -q -t "$tag" "$work" >/dev/null
docker run --rm "$tag" --version
size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "$tag: $size bytes ($(( size / 1024 / 1024 )) MiB)"
