# The gRPC load balancer of the compose `scale` profile: Debian's nginx, round robin over
# the server replicas (no stickiness: any replica continues any session).
#
#   docker build -f docker/balancer.Dockerfile -t rnnserve-balancer .
#
# Same base image as the server, Debian's package, the configuration in docker/balancer/.

ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="rnnserve-balancer" \
      org.opencontainers.image.description="nginx gRPC load balancer for rnnserve replicas"

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /tmp/nginx \
    && chown www-data:www-data /tmp/nginx

COPY docker/balancer/nginx.conf /etc/nginx/nginx.conf
# www-data, which Debian gives the fixed id 33
USER 33:33
EXPOSE 8080
ENTRYPOINT ["nginx", "-g", "daemon off;"]
