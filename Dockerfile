# edge-classify as an OpenFaaS function image: the static binary, the weights it serves,
# nothing else (no shell, no libc). `make stage` builds the three root filesystems into
# dist/image/, the build context (it also copies this file there for faas-cli); then
#   docker build -f Dockerfile -t IMAGE dist/image                  (amd64)
# or all three architectures from this same file:
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t IMAGE --push dist/image
# Dockerfile.arm64 and Dockerfile.arm32v7 are this file with the architecture fixed.
FROM scratch

# Set by buildx/buildah from --platform: amd64, arm64, arm + v7.
ARG TARGETARCH=amd64
ARG TARGETVARIANT=
ARG VERSION=0.1.0

COPY linux-${TARGETARCH}${TARGETVARIANT}/ /

LABEL org.opencontainers.image.title="edge-classify" \
      org.opencontainers.image.description="ResNet-50 and dogs-vs-cats image classification as an OpenFaaS function" \
      org.opencontainers.image.source="https://github.com/edge-classify/edge-classify" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

# The OpenFaaS watchdog's settings, read by `classify serve` itself.
ENV port=8080 \
    read_timeout=10s \
    write_timeout=10s \
    exec_timeout=10s \
    max_inflight=0 \
    lock_file=/tmp/.lock \
    RUST_LOG=info

WORKDIR /function
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/function/classify", "healthcheck"]
ENTRYPOINT ["/function/classify"]
CMD ["serve"]
