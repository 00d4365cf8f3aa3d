# syntax=docker/dockerfile:1
# The `kast` pipeline image: what a Kast step pod runs (python -m soda_reduce.recipe kast.RECIPE ...),
# soda-reduce with its [kast] extra, i.e. PypeIt 2 (docs/pipelines/kast.md).
#
#   docker build -f docker/kast-pipeline.Dockerfile -t ghcr.io/example/soda-reduce-kast:0.1.0 .
#
# The Kubernetes executor overrides the command with the full recipe argv, runs it
# as uid/gid 10001 on a read-only root filesystem with HOME=/tmp, and gives the pod
# no network: the arc templates PypeIt would download ship inside the plug-in
# (static calibrations), Lick's coordinates are given to astropy by the plug-in
# itself, IERS downloads are switched off, and matplotlib's cache goes to /tmp.
ARG PYTHON_BUILD_IMAGE=python:3.11-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_BUILD_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY soda_reduce ./soda_reduce
RUN pip wheel --wheel-dir /wheels ".[kast]"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="soda-reduce-kast" \
      org.opencontainers.image.description="soda-reduce kast pipeline recipes (PypeIt 2, astropy)" \
      org.opencontainers.image.licenses="BSD-3-Clause"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/soda \
    XDG_CONFIG_HOME=/opt/soda-reduce/config \
    MPLCONFIGDIR=/tmp/matplotlib \
    MPLBACKEND=Agg \
    QT_QPA_PLATFORM=offscreen
RUN groupadd --system --gid 10001 soda \
 && useradd --system --uid 10001 --gid soda --home-dir /home/soda --create-home soda
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "soda-reduce[kast]" \
 && mkdir -p /opt/soda-reduce/config/astropy \
 && printf '[utils.iers.iers]\nauto_download = False\n' \
      > /opt/soda-reduce/config/astropy/astropy.cfg \
 && python -m soda_reduce.recipe --list | grep -q '^kast.science$'
USER 10001:10001
WORKDIR /home/soda
ENTRYPOINT ["python", "-m", "soda_reduce.recipe"]
CMD ["--list"]
