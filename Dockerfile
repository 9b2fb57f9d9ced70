# hcld-bids as a Docker image (BIDS App).
#
#   docker build -t hcld-bids \
#     --build-arg VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' hcld_bids/_version.py)" \
#     --build-arg VCS_REF="$(git rev-parse HEAD)" .
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" \
#     -v /path/to/bids:/data:ro -v /path/to/out:/out -v /path/to/work:/work \
#     hcld-bids /data /out participant --target-site SITE -w /work
#
# Base: the official Debian Python image plus the PyPI torch wheel. On Linux x86_64 that wheel is CUDA
# enabled and brings its own CUDA runtime, cuDNN and NCCL as pip packages (torch 2.13.0: CUDA 13.0,
# which needs an NVIDIA driver of the R580 series or newer on the host), so a CUDA base image would only
# duplicate those libraries. glibc 2.41 (Debian 13) satisfies the manylinux wheels of antspyx, torch and
# the validator's deno. TORCH_VERSION is the version CI tests (.ci/run); TORCH_INDEX_URL picks another
# CUDA build, e.g. https://download.pytorch.org/whl/cu128 for older drivers.
FROM python:3.11-slim-trixie

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
# Provenance: VERSION must equal the package's version when given (checked below).
ARG VERSION=
ARG VCS_REF=unknown
ARG BUILD_DATE=
ARG IMAGE_TAG=hcld-bids
ARG IMAGE_URI=

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The image runs as any UID (docker run -u "$(id -u):$(id -g)"), so HOME is a world-writable directory:
# matplotlib, torch and XDG caches default to it. Under Apptainer HOME is the user's own home instead
# (the image's HOME is not applied), which is why no cache variable points into the image.
# TEMPLATEFLOW_HOME lies outside HOME: the templates are baked in at build time and only read at run
# time (compute nodes often have no internet). NIPYPE_NO_ET stops nipype's online version check.
ENV HOME=/home/hcld \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    MPLBACKEND=Agg \
    NIPYPE_NO_ET=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HCLD_CONTAINER_TYPE=docker \
    HCLD_CONTAINER_TAG=${IMAGE_TAG} \
    HCLD_CONTAINER_URI=${IMAGE_URI}

RUN useradd --no-log-init --create-home --home-dir /home/hcld --uid 1000 --user-group hcld \
    && mkdir -p /data /out /work "${TEMPLATEFLOW_HOME}" \
    && chmod a+rwx /home/hcld /out /work

# torch first, in its own layer: it is most of the image and changes least often.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The package itself, non-editable, from this repository (.dockerignore keeps the context to what
# setup.cfg needs).
COPY . /tmp/hcld-bids
RUN pip install --no-cache-dir /tmp/hcld-bids \
    && rm -rf /tmp/hcld-bids \
    && installed="$(python -c 'import hcld_bids; print(hcld_bids.__version__)')" \
    && { [ -z "${VERSION}" ] || [ "${VERSION}" = "${installed}" ] \
         || { echo "VERSION=${VERSION} but the package is ${installed}" >&2; exit 1; }; }

# The TemplateFlow templates of the bundled demo model's preprocessing, fetched now into
# TEMPLATEFLOW_HOME; the matplotlib font cache is built once here instead of at every first run.
RUN python -m hcld_bids.fetch_templates \
        --model "$(python -c 'from hcld_bids.config import DEMO_MODEL_DIR; print(DEMO_MODEL_DIR)')" \
    && python -c 'import matplotlib.font_manager' \
    && chmod -R a+rX "${TEMPLATEFLOW_HOME}" \
    && chmod -R a+rwX /home/hcld \
    && hcld-bids --version

LABEL org.opencontainers.image.title="hcld-bids" \
      org.opencontainers.image.description="Harmonization of T1-weighted brain MRI across sites (HCLD), a BIDS App" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.source="https://github.com/hcld-bids/hcld-bids" \
      org.opencontainers.image.url="https://github.com/hcld-bids/hcld-bids" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 1000:1000
WORKDIR /home/hcld
ENTRYPOINT ["hcld-bids"]
