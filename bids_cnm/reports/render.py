"""Draw the figures of the sections and render the page from the Jinja2 templates.

The templates (``templates/report.html.j2`` and its block macros) are loaded
with autoescaping on: every title, caption and table cell is text, escaped by
Jinja2, never pasted as HTML.

Figures are drawn after all sections are built, in worker processes when there
are enough of them (plotting is CPU-bound and matplotlib is not thread-safe).
The workers are forked after nilearn's plotting module is imported, so none of
them pays the import again.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import jinja2

from bids_cnm.reports.blocks import Figure, Section, iter_figures

LOGGER = logging.getLogger("bids_cnm.reports")

__all__ = ["environment", "render_page", "draw_figures", "compress_png"]

#: fewer figures than this are drawn in this process (a pool costs ~0.3 s to start)
MIN_FIGURES_FOR_POOL = 6
#: colours kept in a figure's PNG (a palette PNG is 2-4 times smaller than RGBA)
PNG_COLORS = 192


def environment() -> jinja2.Environment:
    """The report's Jinja2 environment (package templates, autoescaping on)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("bids_cnm.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(sections: Sequence[Section], title: str, subtitle: str) -> str:
    """The report's HTML."""
    template = environment().get_template("report.html.j2")
    return template.render(sections=list(sections), title=title, subtitle=subtitle)


def compress_png(png: bytes) -> bytes:
    """The PNG with its colours quantized to a palette (visually the same for plots)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    paletted = image.quantize(colors=PNG_COLORS, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    paletted.save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(png) else png


def _draw(job) -> tuple[bytes | None, str | None]:
    """Run one figure's job; a failing figure gives its error, not an exception."""
    try:
        return compress_png(job()), None
    except Exception as exc:  # one bad figure must not cost the report
        return None, f"{type(exc).__name__}: {exc}"


def _pool_size(n_figures: int, n_procs: int | None) -> int:
    if n_procs is None:
        n_procs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    if n_figures < MIN_FIGURES_FOR_POOL or sys.platform != "linux":
        return 1  # fork (cheap, inherits the imports) is only safe to rely on on Linux
    return max(1, min(n_procs, n_figures))


#: relative drawing cost of the figure functions (measured on the demo: a nilearn display
#: or a grid of many maps costs several times a bar chart); unknown ones count 1
_COST = {"glass_grid": 6, "voxel_scatter": 4, "stat_map_ortho": 4, "plateaus_glass_brain": 3,
         "values_glass_brain": 3, "coordinates_glass_brain": 3, "zoomed_slices": 3,
         "stat_map_mosaic": 3, "slices_grid": 2}


def _cost(fig: Figure) -> int:
    return _COST.get(getattr(getattr(fig.job, "func", None), "__name__", ""), 1)


def draw_figures(sections: Sequence[Section], n_procs: int | None = None) -> list[Figure]:
    """Draw every figure of ``sections`` (sets ``png`` or ``error``); returns the failures.

    Parameters
    ----------
    sections : sequence of Section
    n_procs : int, optional
        Processes to draw in; default the CPUs this process may use.
    """
    from bids_cnm.reports import figures as _figures  # noqa: F401 (imported before forking)

    figures = [f for s in sections for f in iter_figures(s.blocks)]
    size = _pool_size(len(figures), n_procs)
    if size > 1:
        import nilearn.plotting  # noqa: F401 (so that the forked workers have it)

        _figures.background()

        # the costliest first: a long figure started last would leave the other workers
        # idle at the end (longest-processing-time-first scheduling)
        order = sorted(range(len(figures)), key=lambda k: -_cost(figures[k]))
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=size, mp_context=context) as pool:
            drawn = list(pool.map(_draw, [figures[k].job for k in order], chunksize=1))
        results = [None] * len(figures)
        for k, result in zip(order, drawn):
            results[k] = result
    else:
        results = [_draw(f.job) for f in figures]
    failed = []
    for fig, (png, err) in zip(figures, results):
        fig.png, fig.error = png, err
        if err:
            LOGGER.warning("report: cannot draw %r: %s", fig.alt, err)
            failed.append(fig)
    return failed
