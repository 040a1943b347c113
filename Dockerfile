# Multi-stage build: compile with the Rust toolchain, run from a small Debian image.
#   docker build -t berth .
#   docker run -p 5000:5000 -v berth-data:/var/lib/berth berth
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin berth && strip target/release/berth

FROM debian:bookworm-slim
# CA certificates: an S3 store (AWS) is reached over HTTPS.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /var/lib/berth berth \
 && mkdir -p /var/lib/berth && chown berth /var/lib/berth
COPY --from=build /src/target/release/berth /usr/local/bin/berth
COPY config/berth.toml /etc/berth/berth.toml
USER berth
ENV BERTH_LISTEN=0.0.0.0:5000 BERTH_DATA_DIR=/var/lib/berth
VOLUME /var/lib/berth
EXPOSE 5000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve"]
