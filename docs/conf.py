"""Sphinx configuration of the bids_cnm documentation (Markdown pages, read by MyST)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_cnm import __version__  # noqa: E402

project = "bids_cnm"
author = "The bids_cnm developers"
copyright = "The bids_cnm developers"  # noqa: A001
version = release = __version__

extensions = ["myst_parser", "sphinx.ext.mathjax"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["dollarmath", "amsmath", "deflist", "colon_fence"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

html_theme = "alabaster"
html_title = f"bids_cnm {__version__}"
html_static_path: list[str] = []
