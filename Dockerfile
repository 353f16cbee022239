# syntax=docker/dockerfile:1
#
# One image for both Deployments: `bootvolume serve` (the webhook) and
# `bootvolume reconcile` (the controller). Build:
#   docker build -t quay.io/metal3-io/bootvolume:dev .
# Needs BuildKit (the default builder since Docker 23) for the cache mounts.

# ---- build ------------------------------------------------------------------
# Matches the crate's rust-version floor (1.89) with room to spare; Debian bookworm so the
# binary's glibc matches the distroless cc-debian12 runtime below.
FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
# Everything the build reads: the manifest and lock file, the sources, the bench target
# Cargo.toml declares, and manifests/crd (the binary embeds the schema patch with
# include_str!).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY manifests/crd/bootvolume-schema-patch.json ./manifests/crd/bootvolume-schema-patch.json
# --locked: build exactly the reviewed Cargo.lock, fail instead of re-resolving.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin bootvolume \
 && install -D -m 0755 target/release/bootvolume /out/bootvolume

# ---- runtime ----------------------------------------------------------------
# distroless/cc: glibc and libgcc only; no shell, no package manager. The :nonroot tag
# runs as uid/gid 65532, which the Deployments' securityContext also requires.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="bootvolume" \
      org.opencontainers.image.description="Admission webhook and Ironic reconciler for metal3 BareMetalHost spec.bootVolume" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/bootvolume /usr/local/bin/bootvolume
USER 65532:65532
# 9443: webhook HTTPS (serve --listen); 8080: metrics and probes (--metrics-listen).
EXPOSE 9443 8080
ENTRYPOINT ["/usr/local/bin/bootvolume"]
CMD ["--help"]
