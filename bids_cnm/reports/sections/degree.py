"""The degree (hub) check: is each network more than the connectome's hubs?"""

from __future__ import annotations

from bids_cnm.reports.blocks import Section, Table, note
from bids_cnm.reports.context import NIFTI, KeyNumber, ReportContext
from bids_cnm.reports.sections.common import map_figures
from bids_cnm.reports.tables import fmt, fmt_p, formatted, read_tsv

__all__ = ["degree_section"]


def degree_section(ctx: ReportContext) -> Section | None:
    """The degree map on slices, each network's correlation with it and the null."""
    files = [f for f in ctx.index.files if f.get("stat") == "degree"
             or (f.get("desc") or "").startswith("degree")]
    if not files:
        return None
    ctx.show(*files)
    blocks: list = []
    degree = next((f for f in files if f.get("stat") == "degree" and f.extension in NIFTI),
                  None)
    table = next((f for f in files if f.get("desc") == "degree" and f.extension == ".tsv"),
                 None)
    if degree is not None:
        samples = degree.sidecar.get("NumberOfSampleVoxels", "?")
        blocks += map_figures(
            degree, what="Degree map", vmax=None, threshold=0.0, symmetric=False,
            cmap="viridis", cbar_label="mean |z|",
            caption=f"The connectome's degree: each voxel's mean |Fisher z| to {samples} "
                    "grey-matter voxels, averaged over subjects (van den Heuvel et al. 2026, "
                    "doi:10.1038/s41593-025-02196-7). Grey matter: "
                    f"{degree.sidecar.get('GreyMatter', 'see the sidecar')}.")
    if table is not None:
        frame = read_tsv(table)
        main = frame[frame["network"] == "main"] if "network" in frame.columns else frame
        for _, row in main.iterrows():
            ctx.key_numbers.append(KeyNumber(
                f"Degree check, set {row['set']}",
                f"r with degree {fmt(row.get('r_degree'))}; after regressing degree out, "
                f"r with the network {fmt(row.get('r_residual'))}",
                f"vs {fmt(row.get('n_null'))} relocated networks", fmt_p(row.get("p_degree")),
                section="degree"))
        blocks.append(Table(formatted(frame), source=table.name, compact=True, caption=(
            "r_degree: spatial correlation of the overlap network with the degree map; "
            "r_residual: of the network with itself after regressing degree out; p_degree: "
            "fraction of randomly relocated networks whose |r with degree| is at least as "
            "large (n_null of them).")))
    residuals = [f for f in files if f.get("desc") == "degreeresidual" and f.extension in NIFTI]
    if residuals:
        blocks.append(note("Residual networks (degree regressed out): "
                           + ", ".join(f.name for f in residuals) + "."))
    return Section("degree", "Degree check: is the network more than the connectome's hubs?",
                   blocks, nav="Degree", analyses=sorted(f.name for f in files))

