"""Print ``constraints.txt``: the installed versions of bids_cnm's runtime dependency closure.

Run in an environment where ``pip install .`` has just installed bids_cnm (CPython 3.11,
the image's Python)::

    python tools/pin_constraints.py > constraints.txt
"""

from __future__ import annotations

import importlib.metadata as metadata
import re

from packaging.requirements import Requirement

HEADER = """\
# Pinned versions of every Python package the image installs (the closure of setup.cfg's
# install_requires), used by the Dockerfile, the Apptainer definition and CI (pip -c), so the
# container and the tests run the same versions.  Regenerate after changing dependencies:
#   python tools/pin_constraints.py > constraints.txt  (see docs/installation.md)"""


def closure(root: str = "bids_cnm") -> dict[str, str]:
    """Normalized name -> installed version of ``root``'s runtime requirements, recursively."""
    seen: dict[str, str] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency of a dependency that is not installed
        seen[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    seen.pop(re.sub(r"[-_.]+", "-", root).lower(), None)
    return seen


if __name__ == "__main__":
    print(HEADER)
    for name, version in sorted(closure().items()):
        print(f"{name}=={version}")
