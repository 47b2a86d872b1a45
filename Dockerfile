# vaultrunner in a container: `serve /vault` (docs/deployment.md, "Docker").
#
#   docker build -t vaultrunner .
#   docker run -d --name vaultrunner --user "$(id -u):$(id -g)" \
#     -v ~/Notes:/vault -p 127.0.0.1:7420:7420 \
#     -e VAULTRUNNER_TOKEN="$(openssl rand -hex 32)" vaultrunner
#
# It listens on 0.0.0.0:7420 inside the container, which is beyond
# loopback: serve refuses to start without VAULTRUNNER_TOKEN (SPEC §5).

FROM rust:bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin vaultrunner

FROM debian:bookworm-slim
# ca-certificates: HTTPS to model APIs and remote vaults; git: --git-sync.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/vaultrunner vaultrunner \
 && mkdir /vault && chown vaultrunner:vaultrunner /vault
COPY --from=build /src/target/release/vaultrunner /usr/local/bin/vaultrunner
USER vaultrunner
WORKDIR /home/vaultrunner
ENV VAULTRUNNER_LOG=info
VOLUME /vault
EXPOSE 7420
# `vaultrunner health` asks the serve in this container for GET /health
# (with VAULTRUNNER_TOKEN when set): 0 when ok, 1 when degraded or down.
HEALTHCHECK --interval=30s --timeout=10s --start-period=15s --retries=3 \
  CMD ["vaultrunner", "health", "/vault", "--server", "127.0.0.1:7420"]
ENTRYPOINT ["vaultrunner"]
CMD ["serve", "/vault", "--listen", "0.0.0.0:7420"]
