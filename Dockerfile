# Herald in a container: a multi-stage build, a non-root user, a data volume and a
# health check. Not exercised by CI (containers cannot be pulled on the build
# machines); kept simple so that it stays correct.
#
#   docker build -t herald .
#   docker run -p 9001:9001 -v herald-data:/var/lib/herald herald

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p herald \
    && cp target/release/herald /usr/local/bin/herald

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/herald --create-home --uid 10001 herald
COPY --from=build /usr/local/bin/herald /usr/local/bin/herald
USER herald
WORKDIR /var/lib/herald
ENV DATABASE_URL=/var/lib/herald/herald.db \
    PORT=9001 \
    HERALD_LOG_FORMAT=json
VOLUME ["/var/lib/herald"]
EXPOSE 9001
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9001/health || exit 1
# SIGTERM drains requests and streams (--shutdown-timeout-secs) before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["herald"]
CMD ["serve"]
