"""HTML report of a bids_cnm run: :func:`build_report`.

The plotting libraries are imported only when a report is built.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["build_report", "REPORT_NAME"]

REPORT_NAME = "bids_cnm_report.html"


def build_report(
    output_dir: Path,
    command: list[str] | None = None,
    settings: dict | None = None,
    versions: dict | None = None,
    files=None,
    n_procs: int | None = None,
) -> Path:
    """Write ``output_dir/bids_cnm_report.html`` from the derivatives on disk.

    See :func:`bids_cnm.reports.report.build_report`.
    """
    from bids_cnm.reports.report import build_report as _build

    return _build(output_dir, command=command, settings=settings, versions=versions,
                  files=files, n_procs=n_procs)
