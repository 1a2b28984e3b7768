#!/usr/bin/env bash
# Assemble the runtime filesystem of the logroute image in DIR: the binary, exactly the
# shared libraries it links (from `ldd`), the CA bundle (for https endpoints that use
# the system roots) and an /etc/passwd naming user 65532. No shell, no package manager.
#
# Usage: scripts/rootfs.sh BINARY DIR
# Used by the Dockerfile's build stage and by scripts/image-local.sh.
set -euo pipefail
binary="$1"
root="$2"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
install -m 0755 "$binary" "$root/usr/local/bin/logroute"
# Every absolute path ldd prints: the libraries and the dynamic loader.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
  cp --parents -L "$lib" "$root/"
done
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/nonexistent\nnonroot:x:65532:65532:nonroot:/home/nonroot:/nonexistent\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
chmod 1777 "$root/tmp"
