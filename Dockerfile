# syntax=docker/dockerfile:1
# ember in a container: the same dist folder as `make dist` (bin/ember, the libtorch libraries it needs, the
# default models) on a slim Debian, running as a non-root user.
#
#   docker build -t ember .                          # the CPU image (the last stage, `cpu`, is the default)
#   docker build --target cuda -t ember:cuda .       # the CUDA image (run with --gpus all)
#   docker run --rm -p 8080:8080 ember               # http://localhost:8080, ready when /health/ready is 200
#   docker build --target cpu-prebuilt -f Dockerfile -t ember dist/ember-0.1.0-linux-x86_64-cpu
#                                                    # the same image from a `make dist` folder (see cpu-prebuilt)
#
# Configuration is only through EMBER_* variables (every `ember serve` flag has one: `ember serve --help`).
# The builder stages run the project's own setup (`make models dist`): the PyTorch wheel from PyPI, the
# TorchScript exports, cargo build --release. Expect about 20 minutes and 10 GB of build cache on 2 cores.

# ---------------------------------------------------------------------------------------------------------------
# builder: the toolchain and the project's setup. Debian bookworm, like the runtime, so that the glibc and
# libstdc++ the binary was linked against are the ones it finds at run time.
FROM rust:1.95-bookworm AS builder

# python3-venv for the venv of the exports and libtorch; cmake and nasm build the bundled libjpeg-turbo; patchelf
# points the packed binary at its lib/ folder; npm fetches the CC0 photos of the style exports.
# Versions are not pinned: bookworm's point and security releases replace the exact versions, and a pinned
# build would break each time; the base image's tag pins the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv cmake nasm patchelf npm \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# The venv (torch is 4.6 GB) and the downloaded sources come first, in their own layer: they change only when
# models/export/ changes, not with every change to the Rust code.
COPY Makefile ./
COPY models/export/ models/export/
RUN make setup

COPY . .
# The cargo registry is cached between builds; target/ stays in the layer (the dist stages run make again, which
# finds the binary up to date).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    make build models

# ---------------------------------------------------------------------------------------------------------------
# The two dist folders, each in its own stage so that `docker build .` never packs the CUDA one.
FROM builder AS dist-cpu
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    make dist DIST_TARBALL=no && mv dist/ember-*-linux-x86_64-cpu /opt/ember

FROM builder AS dist-cuda
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    make dist-cuda DIST_TARBALL=no && mv dist/ember-*-linux-x86_64-cuda /opt/ember

# ---------------------------------------------------------------------------------------------------------------
# runtime: what both images share. Nothing is installed: bin/ember with lib/ needs only glibc, libstdc++ and
# libgcc_s from the system (deploy/dist.sh lists them), which debian:bookworm-slim has; the dist folder was run as
# UID 10001 in a bare Debian 12 minbase root with nothing added.
FROM debian:bookworm-slim AS runtime

ENV EMBER_HOST=0.0.0.0 \
    EMBER_PORT=8080 \
    EMBER_MODEL_REPO=/models

USER 10001:10001
WORKDIR /opt/ember
# 8080: HTTP (REST, /v2, /docs, /metrics); 8081: the Open Inference Protocol over gRPC (EMBER_GRPC_PORT).
EXPOSE 8080 8081
# ember-probe asks /health/ready on 127.0.0.1:$EMBER_PORT, over TLS when EMBER_TLS_CERT is set (as serve's
# --tls-cert), presenting EMBER_PROBE_CLIENT_CERT/_KEY to a server with mutual TLS and EMBER_PROBE_API_KEY to one
# with --protect-ops; it links no libtorch and starts in a millisecond. The image installs no curl, and bash's
# /dev/tcp speaks no TLS. Generous start period: loading and warming every model (on a cold GPU, too) takes a while.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/opt/ember/bin/ember-probe"]
ENTRYPOINT ["/opt/ember/bin/ember"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------------------------
# cpu-prebuilt, cuda-prebuilt: the same two images from a dist folder made already (`make dist DIST_TARBALL=no`,
# `make dist-cuda DIST_TARBALL=no`), which is the build context in place of the repository. Nothing is built and
# the builder image is not needed; deploy/image.sh (`make image`) builds them this way with podman:
#   docker build --target cpu-prebuilt -f Dockerfile -t ember:0.1.0 dist/ember-0.1.0-linux-x86_64-cpu
#   docker build --target cuda-prebuilt -f Dockerfile -t ember:0.1.0-cuda dist/ember-0.1.0-linux-x86_64-cuda
# Each copies what its namesake below copies and sets the same variables.
FROM runtime AS cuda-prebuilt

COPY bin /opt/ember/bin
COPY lib /opt/ember/lib
COPY README.txt /opt/ember/README.txt
COPY --chown=10001:10001 models /models

ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    EMBER_DEVICE=auto

FROM runtime AS cpu-prebuilt

COPY bin /opt/ember/bin
COPY lib /opt/ember/lib
COPY README.txt /opt/ember/README.txt
COPY --chown=10001:10001 models /models

ENV EMBER_DEVICE=cpu

# ---------------------------------------------------------------------------------------------------------------
# cuda: `docker build --target cuda .`. The dist-cuda folder bundles every CUDA user-space library ember needs
# (cudart, cuBLAS, cuDNN, NCCL, NVRTC, ...; from the system they need zlib besides glibc and libstdc++, which
# debian:bookworm-slim has), so a plain Debian image is enough: the only piece that comes from the
# host is the driver (libcuda.so.1), which the NVIDIA container toolkit mounts when the container is started
# with --gpus (Docker) or given nvidia.com/gpu (Kubernetes). The two NVIDIA_* variables are what the toolkit
# reads to do it (the nvidia/cuda images set the same); without a GPU the image runs on the CPU.
FROM runtime AS cuda

COPY --from=dist-cuda /opt/ember/bin /opt/ember/bin
COPY --from=dist-cuda /opt/ember/lib /opt/ember/lib
COPY --from=dist-cuda /opt/ember/README.txt /opt/ember/README.txt
# The models belong to the server's user, so that the admin API can publish fine-tuned versions in place.
COPY --from=dist-cuda --chown=10001:10001 /opt/ember/models /models

ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    EMBER_DEVICE=auto

# ---------------------------------------------------------------------------------------------------------------
# cpu: the default image (the last stage).
FROM runtime AS cpu

COPY --from=dist-cpu /opt/ember/bin /opt/ember/bin
COPY --from=dist-cpu /opt/ember/lib /opt/ember/lib
COPY --from=dist-cpu /opt/ember/README.txt /opt/ember/README.txt
COPY --from=dist-cpu --chown=10001:10001 /opt/ember/models /models

ENV EMBER_DEVICE=cpu
