# syntax=docker/dockerfile:1
# The kube-pim operator image: `kube-pim run` (the operator), `kube-pim sweep` (the reaper),
# `kube-pim crds` / `kube-pim policies`. Multi-stage: a Rust toolchain builds the release
# binary; the runtime is distroless (glibc and libgcc, no shell, no package manager), running
# as the unprivileged user 65532 the chart's securityContext expects.
#
#   docker build -t kube-pim:0.1.0 .
#
# Not built in this repository's CI (it has no Docker engine); the chart's tests run the same
# binary from `cargo build`.

# The toolchain the project is developed with (Cargo.toml's rust-version is the minimum);
# bookworm matches the runtime's Debian 12 glibc.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not download and rebuild them: a dummy crate
# with the real manifest and lock file.
COPY Cargo.toml Cargo.lock ./
# jemalloc's built-in options (.cargo/config.toml): read when the dependencies build.
COPY .cargo ./.cargo
RUN mkdir -p src/bin \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > src/bin/kube-pim-testenv.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin kube-pim \
 && rm -rf src
COPY src ./src
# touch: the dummy build's artifacts must not look newer than the real sources.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin kube-pim \
 && install -D -m 0755 target/release/kube-pim /out/kube-pim

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/kube-pim /usr/local/bin/kube-pim
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kube-pim"]
CMD ["run"]
