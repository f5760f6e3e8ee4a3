"""The HTML report: built from a real (small) demo run, checked as HTML and in a browser."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_cnm.reports import REPORT_NAME, build_report

CHROMIUM = Path("/usr/bin/chromium")
CORE_SECTIONS = ("summary", "inputs", "overlap", "seeds", "provenance")
#: --min-volumes of the demo run: between the demo subjects' 50 volumes (one run) and the
#: first subject's 100 (two runs), so the run warns about some subjects, not all
MIN_VOLUMES = 60


class Page(HTMLParser):
    """Everything the tests look at: sections, images, captions, tables, attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[str] = []
        self.nav_links: list[str] = []
        self.images: list[dict] = []
        self.svgs = 0
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.classes: list[str] = []
        self.tables: dict[str, dict] = {}  # data-source -> {"header": [...], "rows": [[...]]}
        self.captions: list[str] = []
        self.ids: dict[str, dict] = {}
        self.tables_by_id: dict[str, dict] = {}
        self.headings: list[str] = []
        self.images_in: dict[str, int] = {}  # element id -> images inside it
        self._id_stack: list[tuple[str, str]] = []  # (tag, id) of open elements with an id
        self._heading: list[str] | None = None
        self._stack: list[str] = []
        self._table: dict | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._caption: list[str] | None = None
        self._in_nav = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in ("img", "meta", "link", "br", "input"):
            self._stack.append(tag)
        if "id" in a:
            self.ids[a["id"]] = a
            self.images_in.setdefault(a["id"], 0)
        if tag not in ("img", "meta", "link", "br", "input"):
            self._id_stack.append((tag, a.get("id")))
        if tag in ("h2", "h3"):
            self._heading = []
        self.classes += (a.get("class") or "").split()
        for key in ("src", "href", "action", "poster", "data"):
            if key in a:
                self.urls.append((tag, key, a[key]))
        if tag == "nav":
            self._in_nav = True
        elif tag == "a" and self._in_nav:
            self.nav_links.append(a.get("href", ""))
        elif tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "img":
            self.images.append(a)
            for _, ident in self._id_stack:
                if ident:
                    self.images_in[ident] += 1
        elif tag == "svg":
            self.svgs += 1
        elif tag == "table":
            self._table = {"header": [], "rows": [], "source": a.get("data-source"),
                           "id": a.get("id")}
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "figcaption":
            self._caption = []

    def handle_endtag(self, tag):
        if self._stack and self._stack[-1] == tag:
            self._stack.pop()
        if tag in ("h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None
        # the report's HTML is well formed: close up to the last open element of this tag
        for k in range(len(self._id_stack) - 1, -1, -1):
            if self._id_stack[k][0] == tag:
                del self._id_stack[k:]
                break
        if tag == "nav":
            self._in_nav = False
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            if not self._table["header"]:
                self._table["header"] = self._row
            else:
                self._table["rows"].append(self._row)
            self._row = None
        elif tag == "table" and self._table is not None:
            if self._table["source"]:
                self.tables.setdefault(self._table["source"], self._table)
            if self._table["id"]:
                self.tables_by_id[self._table["id"]] = self._table
            self._table = None
        elif tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption).strip())
            self._caption = None

    def handle_data(self, data):
        if self._heading is not None:
            self._heading.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._caption is not None:
            self._caption.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG (raises on anything that is not one)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    assert data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"), "truncated PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


#: which section shows which kind of output (from the file names the run wrote)
SECTION_OF = (
    (lambda n: "_desc-overlap_boldmap" in n and "_variant-" not in n, "network"),
    (lambda n: "_desc-sensitivity_" in n, "sensitivity"),
    (lambda n: "_control-" in n and n.endswith((".nii.gz", ".tsv")), "specificity"),
    (lambda n: any(f"_desc-{d}" in n for d in ("roioverlap", "spatialcorr", "roitoroi",
                                               "controls"))
     or ("_desc-peak" in n and "Convergent" not in n), "validation"),
    (lambda n: "_set-dbs_" in n or "desc-convergent" in n or "peakConvergent" in n, "dbs"),
    (lambda n: "_desc-ale" in n, "ale"),
    (lambda n: "_stat-degree_" in n or "_desc-degree" in n, "degree"),
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small demo run with the demo plan (every analysis), and its report."""
    from bids_cnm.demo import main as demo_main

    root = tmp_path_factory.mktemp("report")
    extra = ["--n-permutations", "100", "--nipype-plugin", "Linear",
             "--min-volumes", str(MIN_VOLUMES)]
    assert demo_main([str(root), "--n-subjects", "6", "--n-volumes", "50", "--nprocs", "1",
                      *extra]) == 0
    out = root / "derivatives"
    start = time.perf_counter()
    report = build_report(out, command=["bids_cnm-demo", str(root), *extra], n_procs=2)
    seconds = time.perf_counter() - start
    return {"out": out, "report": report, "seconds": seconds, "root": root}


@pytest.fixture(scope="module")
def page(run) -> Page:
    return parse(run["report"])


def test_report_is_small_and_written_quickly(run):
    assert run["report"] == run["out"] / REPORT_NAME
    size = run["report"].stat().st_size
    print(f"report: {size / 1e6:.2f} MB in {run['seconds']:.1f} s")
    assert 10_000 < size < 3_000_000
    # ~10 s on 2 free cores; generous for shared CI machines
    assert run["seconds"] < 60, f"report took {run['seconds']:.1f} s"


def test_sections_follow_the_paper_and_the_menu_follows_them(page):
    order = ["summary", "inputs", "network", "seeds", "sensitivity", "specificity",
             "validation", "dbs", "ale", "degree", "provenance"]
    assert [s for s in page.sections if s in order] == order
    assert page.nav_links == [f"#{s}" for s in page.sections]
    assert "cnm-error" not in page.classes, "an error is shown in the report"
    for title in page.headings:  # headings in words, not entity strings
        assert "_" not in title and "set-" not in title and "thresh-" not in title, title


def _expected_sections(out: Path) -> dict[str, set[str]]:
    expected: dict[str, set[str]] = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        if path.suffix == ".json":
            continue
        for rule, section in SECTION_OF:
            if rule(path.name):
                expected.setdefault(section, set()).add(path.name)
                break
    return expected


def test_every_analysis_has_its_section_and_figure(run, page):
    expected = _expected_sections(run["out"])
    assert set(expected) == {s for _, s in SECTION_OF}, "the demo plan runs every analysis"
    for section, names in expected.items():
        shown = set(page.ids[section].get("data-analyses", "").split())
        assert names <= shown, (section, sorted(names - shown)[:5])
        assert page.images_in[section] >= 1, section
    # one group, with a figure, per validation analysis of the plan
    for path in run["out"].rglob("*_desc-roioverlap*_summary.tsv"):
        name = path.name.split("desc-roioverlap")[1].split("_")[0].lower()
        assert page.images_in[f"validation-roioverlap-{name}"] >= 1, name
    for key in ("validation-roitoroi", "dbs-network", "dbs-convergent"):
        assert page.images_in[key] >= 1, key


def test_summary_has_the_key_numbers(run, page):
    table = page.tables_by_id["key-numbers"]
    analyses = [row[0] for row in table["rows"]]
    for word in ("Overlap network", "Specificity", "Validation", "ROI-to-ROI", "DBS",
                 "Convergent", "ALE", "Degree check"):
        assert any(a.startswith(word) for a in analyses), (word, analyses)
    dbs = pd.read_csv(next(run["out"].rglob("*_desc-dbs_summary.tsv")), sep="\t")
    row = table["rows"][analyses.index("DBS network")]
    assert f"{dbs['loo_r'].iloc[0]:.3g}" in row[2]


def test_summary_shows_the_runs_warnings_and_volume_range(run, page):
    """The run's --min-volumes warning (logged while the inputs were resolved) is in its
    record and in the report's summary, with the subjects' range of BOLD volumes."""
    import html

    import nibabel as nb

    counts: dict[str, int] = {}
    for bold in (run["root"] / "connectome").rglob("*_bold.nii.gz"):
        label = bold.name.split("_")[0].removeprefix("sub-")
        counts[label] = counts.get(label, 0) + nb.load(bold).shape[3]
    short = sorted(label for label, n in counts.items() if n < MIN_VOLUMES)
    assert 0 < len(short) < len(counts), counts  # the demo's first subject has two runs

    record = json.loads((run["out"] / "logs" / "bids_cnm_run.json").read_text())
    group = record["levels"]["group"]
    assert group["volumes"] == counts
    logged = [w for w in group["warnings"] if "--min-volumes" in w["message"]]
    assert len(logged) == 1 and "resolve_inputs" in logged[0]["source"]
    for label in short:
        assert f"sub-{label} ({counts[label]})" in logged[0]["message"]

    text = html.unescape(run["report"].read_text(encoding="utf-8"))
    summary = text[text.index('id="summary"'):text.index('id="inputs"')]
    assert f"{logged[0]['message']} ({logged[0]['source']})" in summary
    rows = page.tables_by_id["summary-list"]
    volumes = dict(r[:2] for r in [rows["header"], *rows["rows"]])["BOLD volumes"]
    low, high = min(counts.values()), max(counts.values())
    assert volumes.startswith(f"{low}–{high} BOLD volumes per subject"), volumes
    assert f"{len(short)} below --min-volumes {MIN_VOLUMES}" in volumes


def test_voxel_scatters_plot_the_pairs_the_run_correlated(run):
    """Every spatial correlation the run wrote (variants against the main network,
    networks against a reference, the ALE against the overlap) has its voxel scatter, and
    the r of the plotted voxels is the run's r (to the 7 digits of its table)."""
    import nibabel as nb

    from bids_cnm.reports import figures
    from bids_cnm.reports.blocks import iter_figures
    from bids_cnm.reports.report import _body, make_context
    from bids_cnm.reports.sections.sensitivity import MAX_SCATTERS

    ctx = make_context(run["out"])
    mask = np.asarray(nb.load(ctx.mask_path).dataobj) > 0
    plotted: dict[str, dict[str, float]] = {}
    for section in _body(ctx):
        for fig in iter_figures(section.blocks):
            if getattr(fig.job, "func", None) is figures.voxel_scatter:
                for pair in fig.job.args[0]:
                    x, y = figures.paired_values(pair, mask)
                    plotted.setdefault(section.id, {})[pair.label] = figures._pearson(x, y)
    expected: dict[str, dict[str, float]] = {"sensitivity": {}, "validation": {}, "ale": {}}
    variants = pd.read_csv(next(run["out"].rglob("*_desc-sensitivity_variants.tsv")), sep="\t")
    variants = variants[variants["variant"] != "main"].sort_values("r_with_main")
    for row in variants.head(MAX_SCATTERS).itertuples():
        expected["sensitivity"][row.variant] = row.r_with_main
    for path in run["out"].rglob("*_desc-spatialcorr*_summary.tsv"):
        for row in pd.read_csv(path, sep="\t").itertuples():
            expected["validation"][f"{row.network} vs {row.analysis}"] = row.r
    ale = pd.read_csv(next(run["out"].rglob("*_desc-ale_summary.tsv")), sep="\t")
    expected["ale"]["ALE z vs overlap network, set primary"] = ale["r_ale_overlap"].iloc[0]
    assert all(expected.values())
    for section, pairs in expected.items():
        assert set(plotted.get(section, {})) == set(pairs), section
        for label, r in pairs.items():
            assert plotted[section][label] == pytest.approx(r, abs=1e-6), (section, label)


def test_no_figure_is_empty(page):
    from PIL import Image

    for img in page.images:
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=int)
        background = np.median(pixels.reshape(-1, 3), axis=0)
        drawn = (np.abs(pixels - background).sum(axis=2) > 30).mean()
        assert drawn > 0.01, (img["alt"], drawn)


def test_self_contained(page, run):
    text = run["report"].read_text(encoding="utf-8")
    for tag, attribute, value in page.urls:
        assert value.startswith(("data:", "#")), (tag, attribute, value[:80])
    assert "<script src" not in text and 'rel="stylesheet"' not in text
    assert "Content-Security-Policy" in text


def test_every_image_is_an_embedded_png_with_a_caption(page):
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        width, height = png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert width > 50 and height > 50
        assert img.get("alt")
    assert len(page.captions) == len(page.images)
    assert all(len(c) > 20 for c in page.captions)


def test_peak_tables_equal_the_tsv_with_labels(page, run):
    peaks = sorted(p for p in run["out"].rglob("*_thresh-5p1_peaks.tsv") if "variant" not in
                   p.name and "set-random" not in p.name)
    assert peaks
    for path in peaks:
        expected = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        shown = page.tables[path.name]
        assert shown["header"][:len(expected.columns)] == list(expected.columns)
        # long tables (plateaus of overlap maps give many peaks) show their first rows
        n = len(shown["rows"])
        assert n == min(len(expected), 200)
        assert [r[:len(expected.columns)] for r in shown["rows"]] == expected.values.tolist()[:n]
        assert shown["header"][-1] == "label"
        labels = [r[-1] for r in shown["rows"]]
        assert all(labels) and any(lab not in ("not cortical",) for lab in labels)


def test_inputs_table_equals_seeds_tsv(page, run):
    expected = pd.read_csv(run["out"] / "seeds.tsv", sep="\t", dtype=str, keep_default_na=False)
    shown = page.tables["seeds.tsv"]
    assert shown["header"] == list(expected.columns)
    assert shown["rows"] == expected.values.tolist()


def test_provenance_comes_from_the_derivatives(run, page):
    text = run["report"].read_text(encoding="utf-8")
    assert "versions" in page.ids and "settings" in page.ids
    for name in ("bids_cnm", "numpy", "nilearn", "nipype", "pybids", "jinja2"):
        assert f"<th>{name}</th>" in text, name
    assert "--n-permutations 100" in text
    summary = page.tables_by_id["summary-list"]["rows"]
    connectome = dict((r[0], r[1]) for r in [page.tables_by_id["summary-list"]["header"],
                                             *summary])
    assert "6 subjects" in connectome["Connectome"]
    assert connectome["Main threshold"] == "|t| > 5.1"


def test_index_agrees_with_pybids(run):
    """The report's own file-name parser gives the entities pybids gives with our config."""
    import bids

    from bids_cnm.io.derivatives import PYBIDS_CONFIG
    from bids_cnm.reports.index import DerivativesIndex

    layout = bids.BIDSLayout(run["out"], validate=False,
                             config=["bids", "derivatives", str(PYBIDS_CONFIG)])
    index = DerivativesIndex(run["out"])
    ours = {f.path.name: f for f in index.files}
    checked = 0
    for bf in layout.get(extension=[".nii.gz", ".tsv"]):
        name = Path(bf.path).name
        if name not in ours:
            continue
        theirs = {k: str(v) for k, v in bf.get_entities().items()
                  if k not in ("suffix", "extension", "datatype")}
        mine = dict(ours[name].entities)
        assert {k: mine.get(k) for k in theirs} == theirs, name
        assert ours[name].suffix == bf.get_entities()["suffix"]
        checked += 1
    assert checked > 20


def test_name_parsing_and_matrix_layouts():
    from bids_cnm.reports.index import parse_name, threshold_value
    from bids_cnm.reports.tables import read_matrix

    assert parse_name("task-rest_set-primary_thresh-5p1_desc-overlap_boldmap.nii.gz") == (
        {"task": "rest", "set": "primary", "thresh": "5p1", "desc": "overlap"}, "boldmap",
        ".nii.gz")
    assert parse_name("seeds.tsv") == ({}, "seeds", ".tsv")
    assert parse_name("bids_cnm_report.html") is None
    assert threshold_value("5p1") == 5.1 and threshold_value("7") == 7.0
    assert threshold_value("m2p5") == -2.5
    square = pd.DataFrame({"variant": ["a", "b"], "a": [1.0, 0.5], "b": [0.5, 1.0]})
    long = pd.DataFrame({"x": ["a"], "y": ["b"], "r": [0.5]})
    for frame in (square, square.drop(columns="variant"), long):
        matrix, rows, cols = read_matrix(frame)
        np.testing.assert_array_equal(matrix, [[1.0, 0.5], [0.5, 1.0]])
        assert rows == cols == ["a", "b"]
    with pytest.raises(ValueError):
        read_matrix(pd.DataFrame({"network": ["a", "b", "c"], "r_with_main": [1, 0.9, 0.8]}))


def test_seed_cap_keeps_every_set():
    from bids_cnm.reports.context import ReportContext
    from bids_cnm.reports.index import DerivativesIndex
    from bids_cnm.reports.sections.network import MAX_SEED_PANELS, _pick_seeds

    ctx = ReportContext(index=DerivativesIndex.__new__(DerivativesIndex), settings={})
    ids = [f"p{i}" for i in range(40)] + [f"c{i}" for i in range(10)] + ["r0", "r1"]
    ctx.seed_sets = {s: {"p": "primary", "c": "control", "r": "random"}[s[0]] for s in ids}
    chosen = _pick_seeds(ctx, ids, MAX_SEED_PANELS)
    assert len(chosen) == MAX_SEED_PANELS
    assert {"r0", "r1", "c0", "c3"} <= set(chosen) and "c4" not in chosen
    assert chosen == [s for s in ids if s in chosen]  # file order kept


def test_missing_output_dir_is_an_error(tmp_path):
    from bids_cnm.errors import MissingInputError

    with pytest.raises(MissingInputError):
        build_report(tmp_path / "nothing")


# ------------------------------------------------------------------------ in a real browser
def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--virtual-time-budget=5000"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True,
                          timeout=180, check=False)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium)")
def test_report_renders_in_chromium(run, page, tmp_path):
    """Load the report in headless Chromium: the page's own check (run on load) must count
    every image decoded and no script error, failed resource or blocked request."""
    result = _chromium(["--dump-dom", run["report"].as_uri()], tmp_path / "profile-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = Page()
    dom.feed(result.stdout)
    status = dom.ids.get("report-status")
    assert status is not None, result.stdout[:500]
    assert status.get("data-state") == "loaded", status
    assert int(status["data-images"]) == len(page.images)
    assert int(status["data-loaded"]) == len(page.images), status
    for counter in ("data-script-errors", "data-resource-errors", "data-blocked"):
        assert status[counter] == "0", (counter, status)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium)")
def test_every_section_renders_at_1400_px(run, tmp_path):
    """Screenshot the page at 1400 px; the page's own script reports where each section is.
    A section whose area is blank (almost only background) fails."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    result = _chromium(["--window-size=1400,1000", "--dump-dom", run["report"].as_uri()],
                       tmp_path / "profile-dom")
    dom = Page()
    dom.feed(result.stdout)
    layout = json.loads(dom.ids["report-status"]["data-sections"])
    height = max(top + h for _, top, h in layout) + 50
    shot = tmp_path / "report.png"
    result = _chromium([f"--screenshot={shot}", f"--window-size=1400,{height}",
                        "--hide-scrollbars", run["report"].as_uri()], tmp_path / "profile-shot")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=int)
    assert pixels.shape[1] == 1400
    navbar = pixels[5:40].mean()
    assert navbar < 90, navbar  # the dark fixed bar is drawn
    assert [name for name, _, _ in layout][:1] == ["summary"]
    for name, top, h in layout:
        area = pixels[top + 50: top + h]  # below the section's heading
        assert area.size, name
        inked = (area < 200).mean()
        assert inked > 0.01, (name, inked)
        assert area.std() > 10, name


def test_templates_escape_every_text():
    from bids_cnm.reports.blocks import Group, Section, Table, note
    from bids_cnm.reports.render import render_page

    evil = '<script>alert("x")</script>'
    section = Section("s", evil, [note(evil), Group("g", evil, [Table(
        pd.DataFrame({evil: [evil]}), source=evil)])])
    html = render_page([section], evil, evil)
    assert "<script>alert" not in html
    assert html.count("&lt;script&gt;alert(") >= 6


def test_index_can_be_restricted_to_a_list_of_files(tmp_path):
    from bids_cnm.reports.index import DerivativesIndex

    for name in ("space-A_desc-a_mask.nii.gz", "space-A_desc-b_mask.nii.gz", "seeds.tsv"):
        (tmp_path / name).write_text("x")
    for name in ("space-A_desc-a_mask.json", "space-A_desc-b_mask.json"):
        (tmp_path / name).write_text("{}")
    every = DerivativesIndex(tmp_path)
    some = DerivativesIndex(tmp_path, only=["space-A_desc-a_mask.nii.gz"])
    assert len(every.get(suffix="mask")) == 4 and every.first("seeds.tsv") is not None
    assert [f.name for f in some.get(suffix="mask", extension=".nii.gz")] == [
        "space-A_desc-a_mask.nii.gz"]
    assert some.first("seeds.tsv") is None
    # the listed file's sidecar follows it, not the others'
    assert [f.name for f in some.get(suffix="mask", extension=".json")] == [
        "space-A_desc-a_mask.json"]


def test_subcortical_peaks_are_named_from_the_templates_atlas(tmp_path, monkeypatch):
    """A peak outside the cortical atlas gets the subcortical name of the connectome's
    template when TemplateFlow's Harvard-Oxford subcortical atlas is installed."""
    import nibabel as nb

    from bids_cnm.reports.atlas import cortical_labels
    from bids_cnm.reports.index import DerivativesIndex
    from bids_cnm.reports.sections.common import peaks_table

    if cortical_labels([[0.0, 0.0, 0.0]]) is None:
        pytest.skip("the cortical atlas (NiMARE's Harvard-Oxford) is not installed")
    tpl = "MNI152NLin6Asym"
    home = tmp_path / "templateflow"
    folder = home / f"tpl-{tpl}"
    folder.mkdir(parents=True)
    affine = np.array([[2.0, 0, 0, -90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
    labels = np.zeros((91, 109, 91), np.int16)
    ijk = np.rint(np.linalg.inv(affine) @ [-10, -18, 8, 1])[:3].astype(int)
    labels[tuple(ijk)] = 4
    nb.Nifti1Image(labels, affine).to_filename(
        folder / f"tpl-{tpl}_res-02_atlas-HOSPA_desc-th25_dseg.nii.gz")
    (folder / f"tpl-{tpl}_atlas-HOSPA_dseg.tsv").write_text("index\tname\n4\tLeft Thalamus\n")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    out = tmp_path / "derivatives"
    out.mkdir()
    name = f"space-{tpl}_set-primary_thresh-5p1_peaks.tsv"
    pd.DataFrame({"cluster": [1], "sign": [1], "x": [-10], "y": [-18], "z": [8],
                  "value": [0.75]}).to_csv(out / name, sep="\t", index=False)
    f = next(x for x in DerivativesIndex(out).files if x.name == name)
    table = next(b for b in peaks_table(f) if hasattr(b, "frame"))
    assert list(table.frame["label"]) == ["Left Thalamus"]
    assert "HOSPA" in table.caption
