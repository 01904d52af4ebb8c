# The shared session store of the compose `scale` profile: Debian's redis-server.
#
#   docker build -f docker/redis.Dockerfile -t rnnserve-redis .
#
# Built from the same base image as the server (no other base image to fetch or stand in for
# offline), with Debian's package. Nothing is persisted: a session store holds live state
# whose expiry Redis keeps; losing it loses open sessions, never models.

ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="rnnserve-redis" \
      org.opencontainers.image.description="Redis session store for scaled-out rnnserve"

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --no-log-init --uid 10002 --user-group --shell /usr/sbin/nologin rnnserve-redis

USER 10002:10002
WORKDIR /tmp
EXPOSE 6379
HEALTHCHECK --interval=5s --timeout=3s --retries=5 CMD ["redis-cli", "ping"]
# Reachable only on the compose network (no published port): protected mode off, no disk.
ENTRYPOINT ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", \
            "--save", "", "--appendonly", "no"]
