# vigil, built from this repository. Multi-stage: a Rust build image, then a
# slim runtime that runs as an unprivileged user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin vigil

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/vigil vigil \
    && mkdir -p /var/lib/vigil && chown vigil /var/lib/vigil
COPY --from=build /src/target/release/vigil /usr/local/bin/vigil
USER vigil
WORKDIR /var/lib/vigil
EXPOSE 4317 4318
VOLUME ["/var/lib/vigil"]
ENTRYPOINT ["vigil", "serve", "--grpc-listen", "0.0.0.0:4317", "--http-listen", "0.0.0.0:4318", "--data-dir", "/var/lib/vigil"]
