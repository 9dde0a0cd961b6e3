# syntax=docker/dockerfile:1
# The graspfleet image: every service, the CLI and the training job, from this
# repository's own files. One image for all services keeps what runs in a pod
# identical to what `make test` exercised; the command picks the service.
# The default target (`runtime`, the last stage) is that image; `runtime-gpu`
# is the same with TensorFlow's CUDA libraries, for training Jobs on NVIDIA
# GPUs (k8s/components/gpu-training).
#
#   make images                      # docker or podman; tags graspfleet:<version>
#   make images IMAGE_VARIANTS="cpu gpu"   # and graspfleet-gpu:<version>
#   docker run --rm graspfleet:0.1.0 graspfleet store serve --help

# Pinned by exact tag (patch release and Debian release): rebuilds get the same base.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/graspfleet
# Dependencies first (pyproject.toml's list, pinned by constraints.txt), so that
# code edits reuse this layer.
COPY pyproject.toml constraints.txt README.md ./
RUN /opt/graspfleet/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
    && /opt/graspfleet/bin/pip install --quiet -c constraints.txt -r requirements.txt
COPY protos ./protos
COPY services ./services
COPY robots ./robots
COPY models ./models
# The stubs are generated here, never copied from a work tree.
RUN /opt/graspfleet/bin/python -m grpc_tools.protoc -Iprotos --python_out=protos \
        --grpc_python_out=protos --pyi_out=protos protos/graspfleet/v1/*.proto \
    && /opt/graspfleet/bin/pip install --quiet --no-deps . \
    && /opt/graspfleet/bin/python -c "import graspfleet.v1.episode_store_pb2, services.cli, robots.inventory, models.registry"

# The GPU variant adds tensorflow[and-cuda]: NVIDIA's CUDA, cuDNN and NCCL
# wheels. TensorFlow is pinned by constraints.txt, and each CUDA wheel to the
# version that TensorFlow release was built against (the lower bound its
# and-cuda extra declares), so the build is as reproducible as the CPU image's.
# The NVIDIA driver comes from the GPU node (the NVIDIA container toolkit).
FROM builder AS builder-gpu
RUN /opt/graspfleet/bin/python -c 'import importlib.metadata as md, re; print("\n".join("%s==%s" % re.match(r"([A-Za-z0-9_.-]+)\s*[<>=!,.0-9\s]*?>=\s*([0-9.]+)", r).groups() for r in md.requires("tensorflow") if "and-cuda" in r))' > cuda-constraints.txt \
    && cat cuda-constraints.txt \
    && /opt/graspfleet/bin/pip install --quiet -c constraints.txt -c cuda-constraints.txt "tensorflow[and-cuda]" \
    && /opt/graspfleet/bin/pip check \
    && /opt/graspfleet/bin/python -c "import importlib.metadata as md; md.version('nvidia-cudnn-cu12')"

# What both runtime images share: the unprivileged user and the environment.
FROM ${PYTHON_IMAGE} AS runtime-base
# The distroless "nonroot" uid/gid, as the trainer's Kubernetes Jobs and the manifests run it.
ARG UID=65532
RUN groupadd --system --gid ${UID} graspfleet \
    && useradd --system --uid ${UID} --gid ${UID} --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin graspfleet
# The root filesystem is read-only in the cluster: every cache TensorFlow,
# matplotlib or Python might write goes under /tmp (an emptyDir in the pods).
ENV PATH=/opt/graspfleet/bin:$PATH \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /app
USER ${UID}:${UID}
ENTRYPOINT []
CMD ["graspfleet", "--help"]

# graspfleet-gpu: training Jobs on NVIDIA GPUs. The device plugin sets
# NVIDIA_VISIBLE_DEVICES; the toolkit mounts the driver's compute libraries.
FROM runtime-base AS runtime-gpu
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
COPY --from=builder-gpu /opt/graspfleet /opt/graspfleet

# graspfleet: every service (the default target, so it stays the last stage).
FROM runtime-base AS runtime
COPY --from=builder /opt/graspfleet /opt/graspfleet
