# bids_cnm as a BIDS App container.
#
#   docker build -t ghcr.io/bids-cnm/bids_cnm:0.1.0 .
#   docker build --build-arg FETCH_TEMPLATES=0 .     # offline build host: no TemplateFlow
#   docker run --rm -u "$(id -u):$(id -g)" --network none \
#       -v /data:/data:ro -v "$PWD/out:/out" -v "$PWD/work:/work" \
#       ghcr.io/bids-cnm/bids_cnm:0.1.0 /data/connectome /out group \
#       --coordinates /data/coordinates.tsv
#
# Any uid can run it: the install is read-only and system-wide, caches go to a per-user
# folder (bids_cnm.cli.environment), the default work directory /work is writable by
# everyone (mount a folder there to keep it for resuming), and nothing is fetched at run
# time: the TemplateFlow resources the analyses use are fetched here, at build time.
FROM python:3.11-slim

LABEL org.opencontainers.image.title="bids_cnm" \
      org.opencontainers.image.description="Coordinate network mapping as a BIDS App" \
      org.opencontainers.image.source="https://github.com/bids-cnm/bids_cnm" \
      org.opencontainers.image.licenses="Apache-2.0"

# 1: fetch the TemplateFlow resources (grey matter, Harvard-Oxford atlases) into the image;
# 0: build without network (the app then uses nilearn's bundled MNI152 and says so).
ARG FETCH_TEMPLATES=1

# Build-time settings only (not part of the runtime environment).
ARG PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The runtime environment; singularity/bids_cnm.def's %environment sets the same
# (tests/test_container.py compares them).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONNOUSERSITE=1 \
    MPLBACKEND=Agg \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NIPYPE_NO_ET=1 \
    BIDS_CNM_CONTAINER=docker \
    BIDS_CNM_WORK_DIR=/work

# Install the package (not editable) with the pinned versions; no pip cache in the layer.
WORKDIR /src
COPY constraints.txt pyproject.toml setup.cfg README.md ./
COPY bids_cnm ./bids_cnm
RUN python -m pip install --no-cache-dir -c constraints.txt . \
    && cd / && rm -rf /src

RUN if [ "$FETCH_TEMPLATES" = "1" ]; then \
        python -m bids_cnm.io.templates fetch && chmod -R a+rX "$TEMPLATEFLOW_HOME"; \
    else \
        echo "FETCH_TEMPLATES=0: no TemplateFlow resources in this image"; \
    fi

# An unprivileged default user; `docker run -u <uid>:<gid>` works for any other uid too.
RUN useradd --create-home --uid 1000 --shell /bin/bash cnm \
    && mkdir -p /work && chmod 1777 /work
USER cnm
WORKDIR /work

ENTRYPOINT ["bids_cnm"]
CMD ["--help"]
