# The autobalancer image: the binary alone on a minimal base without a shell, run as
# uid 65534 (the user the Kubernetes manifests in deploy/kubernetes/ expect).
#
#   docker build -t autobalancer:0.1.0 .
#
# The build stage needs protoc and protobuf's well-known types (etcd-client compiles
# etcd's protos) and builds with the committed Cargo.lock. The image holds only the
# binary, at /usr/local/bin/autobalancer, on distroless's glibc base (TLS is rustls: no
# OpenSSL needed).

FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin autobalancer \
    && install -m 0755 target/release/autobalancer /autobalancer

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /autobalancer /usr/local/bin/autobalancer
USER 65534:65534
EXPOSE 9410
ENTRYPOINT ["/usr/local/bin/autobalancer"]
CMD ["--help"]
