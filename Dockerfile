# infmix + unip on a CUDA PyTorch base image.
#   docker build -t infmix-unip .
#   docker run --rm -v /data:/data infmix-unip infmix build pipelines/infmix.yaml --out /data/infmix
FROM pytorch/pytorch:2.4.1-cuda12.4-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/infmix-unip
COPY pyproject.toml README.md ./
COPY infmix ./infmix
COPY unip ./unip
COPY pipelines ./pipelines
# the project itself, with extras for timm embedders and Ray builds (ranges in pyproject.toml)
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[embed,ray]" \
    && infmix --help > /dev/null \
    && unip --help > /dev/null

CMD ["infmix", "--help"]
