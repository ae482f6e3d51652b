# syntax=docker/dockerfile:1
# keel: one static-ish binary (templates, assets and migrations compiled in) on distroless.
#   docker build -t keel .
#   docker run --env-file .env.prod -p 8080:8080 keel            # `serve` (migrates first)
#   docker run --env-file .env.prod keel worker | migrate | check-config
# docker-compose.prod.yml runs it behind nginx.

# ---- build ---------------------------------------------------------------------------------
# Rust >= 1.94 (Cargo.toml rust-version); bookworm's glibc matches the distroless base below.
FROM rust:1.95-bookworm AS builder
WORKDIR /build
# `sqlx::query!` checks queries against the committed .sqlx/ metadata: no database in the build.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml, Cargo.lock or
# build.rs change, not on every source edit. The stub crate has the real one's shape (a lib and
# the `keel` bin) and an empty static/ for build.rs.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src static migrations \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin keel \
    && rm -rf src static migrations

COPY src ./src
COPY templates ./templates
COPY static ./static
COPY migrations ./migrations
COPY .sqlx ./.sqlx
# COPY keeps the files' old modification times, which may predate the stub build: drop the
# stub's fingerprints (crate and build script) so cargo cannot mistake it for up to date.
RUN rm -rf target/release/.fingerprint/keel-* target/release/build/keel-* \
           target/release/deps/keel-* target/release/deps/libkeel-* target/release/keel \
    && cargo build --release --locked --bin keel \
    && ./target/release/keel --version

# ---- run -----------------------------------------------------------------------------------
# glibc + libgcc + CA certificates and nothing else (no shell, no package manager); the binary
# uses rustls, so no OpenSSL either. `:nonroot` is uid/gid 65532, set numerically below.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /build/target/release/keel /keel
USER 65532:65532
ENV BIND_ADDR=0.0.0.0:8080 \
    APP_ENV=production
EXPOSE 8080
# keel finishes in-flight requests and running jobs on SIGTERM (at most 20 s).
STOPSIGNAL SIGTERM
# `keel healthcheck` GETs /health/live on BIND_ADDR: exit 0 on 200, else 1 (no curl needed).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/keel", "healthcheck"]
ENTRYPOINT ["/keel"]
CMD ["serve"]
