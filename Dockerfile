# The logroute image: one binary (`logroute controller`, `logroute agent`, `logroute crd`)
# and exactly the libraries it links, on `scratch`: no shell, no package manager.
#
#   docker build -t logroute:0.1.0 .
#
# Plain Dockerfile syntax (no BuildKit-only features) so that any builder works.

# ---- build --------------------------------------------------------------------------
# Debian 12 (bookworm), like the runtime below, so the binary links against the same glibc.
FROM rust:1-bookworm AS build
WORKDIR /src
# The whole source tree (.dockerignore keeps out target/ and other local state);
# --locked builds exactly the versions in Cargo.lock.
COPY . .
RUN cargo build --release --locked --bin logroute \
 && target/release/logroute --version \
 && bash scripts/rootfs.sh target/release/logroute /rootfs

# ---- runtime ------------------------------------------------------------------------
# The binary, glibc and libgcc from the build stage (scripts/rootfs.sh), the CA bundle and
# /etc/passwd with user nonroot (65532). scripts/image-local.sh builds the same image
# from a local release build when base images cannot be pulled.
FROM scratch
COPY --from=build /rootfs/ /
# The controller runs as this user. The agent needs to open the Docker socket: the Helm
# chart runs it as root with every capability dropped (see charts/logroute/values.yaml).
USER 65532:65532
# Controller metrics/health on 9090, agent on 9091.
EXPOSE 9090 9091
ENTRYPOINT ["/usr/local/bin/logroute"]
CMD ["--help"]
