# bids_cnm as a BIDS App container.
#
#   docker build -t bids_cnm:0.1.0 -t bids_cnm .
#   docker run --rm -v /data:/data:ro -v /out:/out bids_cnm \
#       /data/connectome /out group --coordinates /data/coordinates.tsv
#
# Everything the app reads at run time is inside the image (TemplateFlow brain masks,
# nilearn's bundled MNI152 templates), so the container needs no network when it runs.
FROM python:3.11-slim

LABEL org.opencontainers.image.title="bids_cnm" \
      org.opencontainers.image.description="Coordinate network mapping as a BIDS App" \
      org.opencontainers.image.source="https://github.com/bids-cnm/bids_cnm" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BIDS_CNM_CONTAINER=docker \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NILEARN_DATA=/opt/nilearn_data \
    NIPYPE_NO_ET=1 \
    NUMBA_CACHE_DIR=/tmp/numba_cache

# Install the package (not editable) from the build context; no pip cache in the layer.
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY bids_cnm ./bids_cnm
RUN python -m pip install --no-cache-dir . \
    && cd / && rm -rf /src

# Fetch at build time the templates the app may need (brain masks of the two MNI
# templates fMRIPrep and XCP-D write, at 1 and 2 mm), readable by any user.
RUN python -c "import templateflow.api as tf; \
paths = [tf.get(t, resolution=r, desc='brain', suffix='mask') \
         for t in ('MNI152NLin2009cAsym', 'MNI152NLin6Asym') for r in (1, 2)]; \
assert all(paths), paths; print(*paths, sep='\n')" \
    && mkdir -p "$NILEARN_DATA" \
    && python -c "from nilearn.datasets import load_mni152_brain_mask; \
load_mni152_brain_mask(resolution=2)" \
    && chmod -R a+rX "$TEMPLATEFLOW_HOME" "$NILEARN_DATA"

# Run as an unprivileged user; `docker run -u $(id -u):$(id -g)` works too.
RUN useradd --create-home --uid 1000 --shell /bin/bash cnm
USER cnm
WORKDIR /home/cnm

RUN bids_cnm --version

ENTRYPOINT ["bids_cnm"]
CMD ["--help"]
