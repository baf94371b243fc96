# syntax=docker/dockerfile:1
# JupyterLab with rayjupyter (server and lab extensions, magics) and Ray's client, for a
# Jupyter pod whose notebooks run on a Ray cluster (runtime/kuberay/jupyter.yaml).
# Build the lab extension first (the image takes it prebuilt: no Node.js inside), then from
# the repository root:
#   (cd labextension && jlpm install && jlpm build:prod)
#   docker build -f runtime/jupyter.Dockerfile -t rayjupyter-jupyter:0.1.0 .
# Python here and in the Ray cluster's image must be the same minor version, and ray the
# same version (Ray Client refuses a mismatch): python 3.11 and rayproject/ray:2.60.0-py311.
FROM python:3.11-slim

# tini as PID 1: forwards SIGTERM (pod deletion) to jupyter, which stops its kernels
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

ARG RAY_VERSION=2.60.0
COPY . /tmp/rayjupyter-src
RUN test -f /tmp/rayjupyter-src/rayjupyter/labextension/static/style.js \
    || { echo "build the lab extension first: (cd labextension && jlpm build:prod)" >&2; exit 1; }
RUN pip install "/tmp/rayjupyter-src[notebook]" "jupyterlab>=4,<5" \
        "ray[default,client]==${RAY_VERSION}" \
    && rm -rf /tmp/rayjupyter-src

RUN useradd --create-home --uid 1000 jupyter
USER 1000
WORKDIR /home/jupyter

EXPOSE 8888

ENTRYPOINT ["tini", "--"]
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser"]
