# The one lockkeeper image: `lockkeeper controller` in the Deployment, `lockkeeper gate` as the
# init container of gated pods, and `kubectl-lock` (the kubectl plugin) beside them.
# Build: docker build -t ghcr.io/lockkeeper/lockkeeper:v0.1.0 .
#
# Stage 1: a static (musl) release binary. TLS is rustls with ring, so only a C compiler and
# musl headers are needed, no OpenSSL.
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin lockkeeper --bin kubectl-lock \
 && strip target/release/lockkeeper target/release/kubectl-lock

# Stage 2: no shell, no package manager, non-root (uid 65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/lockkeeper /usr/local/bin/lockkeeper
COPY --from=build /src/target/release/kubectl-lock /usr/local/bin/kubectl-lock
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/lockkeeper"]
CMD ["--help"]
