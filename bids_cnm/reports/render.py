"""Render the report's page from the Jinja2 templates.

The templates (``templates/report.html.j2`` and its block macros) are loaded
with autoescaping on: every title, caption and table cell is text, escaped by
Jinja2, never pasted as HTML.  The figures are drawn before, by
:func:`bids_cnm.reports.drawing.draw_figures`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jinja2

from bids_cnm.reports.blocks import Section

__all__ = ["environment", "render_page"]


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
