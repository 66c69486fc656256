# syntax=docker/dockerfile:1
#
# Portcullis in a container: a build stage with the Rust toolchain, and a small runtime stage
# with the binary alone, run as an unprivileged user.
#
#   docker build -t portcullis .
#   docker run -d --name portcullis -p 3128:3128 \
#       -v /etc/portcullis/portcullis.toml:/etc/portcullis/portcullis.toml:ro portcullis
#   docker run --rm -v "$PWD/portcullis.toml:/etc/portcullis/portcullis.toml:ro" portcullis \
#       check --config /etc/portcullis/portcullis.toml
#   docker kill -s HUP portcullis        # reload the mounted configuration
#
# In the configuration: listen on 0.0.0.0 (the default 0.0.0.0:3128 does). Clients reaching
# a published port arrive from the Docker bridge (172.17.0.1 and the like), which the default
# clients.allow (172.16.0.0/12) admits; `--network host` shows the real client addresses.
# The admin listener defaults to 127.0.0.1:3129, inside the container: to publish 3129, set
# [admin] listen = "0.0.0.0:3129" and an allow list that covers the host. Files the
# configuration names (htpasswd, hosts_file, pages.dir) are relative to its directory: mount
# them beside it, readable by the container's user (uid 10001). The access log goes to standard output (`docker logs`) unless [log] access
# names a file on a mounted volume.
#
# `docker stop` waits 10 s before SIGKILL, as long as the default [timeouts] shutdown_grace:
# give it more (`docker stop -t 15`, or stop_grace_period in compose) so draining finishes.

# The build stage and the runtime stage use the same Debian release, so the binary finds the
# C library it was linked against.
FROM rust:1.95-slim-trixie AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/portcullis /usr/local/bin/portcullis

FROM debian:trixie-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin portcullis \
    && install -d -m 0755 /etc/portcullis
COPY --from=build /usr/local/bin/portcullis /usr/local/bin/portcullis
# The documented defaults, for a container started without a mounted file.
COPY config/portcullis.toml /etc/portcullis/portcullis.toml
USER portcullis
# 3128: the proxy. 3129: the admin listener (/metrics, /status, /healthz) when configured to
# listen beyond the container's loopback.
EXPOSE 3128 3129
STOPSIGNAL SIGTERM
ENTRYPOINT ["portcullis"]
CMD ["--config", "/etc/portcullis/portcullis.toml"]
