# fleetwatch: multi-stage build, small runtime image, non-root user.
# SQL is checked against a real Postgres by the test suite rather than at compile time, so the
# build needs no database (SQLX_OFFLINE is set for any query macro that may appear).

FROM rust:1-slim-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
# Dependencies first, in their own layer, so code changes rebuild only the crate. Cargo refuses
# a manifest whose [[bench]] files are missing, even for `cargo build`: stub them here (names
# read from Cargo.toml) and copy the real ones below; the release build does not compile them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in $(sed -n '/^\[\[bench\]\]/,/^name/ s/^name *= *"\(.*\)"/\1/p' Cargo.toml); do \
           echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked \
    && rm -rf src benches target/release/deps/fleetwatch* target/release/deps/libfleetwatch*
COPY build.rs ./
COPY benches benches
COPY migrations migrations
COPY templates templates
COPY static static
COPY src src
RUN cargo build --release --locked && strip target/release/fleetwatch

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fleetwatch
COPY --from=build /src/target/release/fleetwatch /usr/local/bin/fleetwatch
USER 10001:10001
ENV FLEETWATCH_HTTP_ADDR=0.0.0.0:8080 LOG_FORMAT=json
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/fleetwatch"]
CMD ["serve"]
