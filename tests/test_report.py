"""The HTML report: built from a real (small) demo run, checked as HTML and in a browser."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bids_cnm.cli.run import main
from bids_cnm.demo.data import make_demo_dataset
from bids_cnm.reports import REPORT_NAME, build_report

CHROMIUM = Path("/usr/bin/chromium")
CORE_SECTIONS = ("summary", "inputs", "overlap", "seeds", "provenance")


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
        elif tag == "svg":
            self.svgs += 1
        elif tag == "table":
            self._table = {"header": [], "rows": [], "source": a.get("data-source")}
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "figcaption":
            self._caption = []

    def handle_endtag(self, tag):
        if self._stack and self._stack[-1] == tag:
            self._stack.pop()
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
            self._table = None
        elif tag == "figcaption" and self._caption is not None:
            self.captions.append("".join(self._caption).strip())
            self._caption = None

    def handle_data(self, data):
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


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 6-subject demo connectome, its group level and the report of it."""
    root = tmp_path_factory.mktemp("report")
    demo = make_demo_dataset(root, n_subjects=6, n_volumes=50)
    out = root / "derivatives"
    command = [str(demo.bids_dir), str(out), "group", "--coordinates", str(demo.coordinates),
               "-w", str(root / "work"), "--nipype-plugin", "Linear"]
    assert main(command) == 0
    start = time.perf_counter()
    report = build_report(out, command=["bids_cnm", *command])
    seconds = time.perf_counter() - start
    return {"out": out, "report": report, "seconds": seconds, "command": command}


@pytest.fixture(scope="module")
def page(run) -> Page:
    return parse(run["report"])


def test_report_is_written_quickly(run):
    assert run["report"] == run["out"] / REPORT_NAME
    assert run["report"].stat().st_size > 10_000
    # the demo report takes ~5-10 s; generous bound for slow CI machines
    assert run["seconds"] < 60, f"report took {run['seconds']:.1f} s"


def test_sections_and_navigation(page):
    for section in CORE_SECTIONS:
        assert section in page.sections, section
        assert f"#{section}" in page.nav_links, section
    assert page.sections[0] == "summary" and page.sections[-1] == "provenance"
    # the demo has no sensitivity/specificity/validation/DBS outputs: no optional section
    assert not [s for s in page.sections if s.startswith("opt-")]
    assert "cnm-error" not in page.classes and "cnm-error-list" not in page.classes


def test_self_contained(page, run):
    text = run["report"].read_text(encoding="utf-8")
    for tag, attribute, value in page.urls:
        assert value.startswith(("data:", "#")), (tag, attribute, value[:80])
    assert "<script src" not in text and 'rel="stylesheet"' not in text
    assert "Content-Security-Policy" in text


def test_every_image_is_an_embedded_png_with_a_caption(page):
    assert len(page.images) >= 6  # coordinates, 2 sets x (slices, axial, glass, pos, neg), seeds
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:40]
        width, height = png_size(base64.b64decode(src.split(",", 1)[1], validate=True))
        assert width > 50 and height > 50
        assert img.get("alt")
    assert len(page.captions) == len(page.images)
    assert all(len(c) > 20 for c in page.captions)


def test_peak_tables_equal_the_tsv(page, run):
    peaks = sorted(run["out"].glob("network/*_peaks.tsv"))
    assert len(peaks) == 2  # sets primary and control, one threshold
    for path in peaks:
        expected = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        shown = page.tables[path.name]
        assert shown["header"] == list(expected.columns)
        assert shown["rows"] == expected.values.tolist()
        numbers = pd.DataFrame(shown["rows"], columns=shown["header"])
        for column in ("x", "y", "z", "value", "cluster_size_mm3"):
            np.testing.assert_array_equal(numbers[column].astype(float),
                                          pd.read_csv(path, sep="\t")[column].to_numpy(float))


def test_inputs_table_equals_seeds_tsv(page, run):
    expected = pd.read_csv(run["out"] / "seeds.tsv", sep="\t", dtype=str, keep_default_na=False)
    shown = page.tables["seeds.tsv"]
    assert shown["header"] == list(expected.columns)
    assert shown["rows"] == expected.values.tolist()


def test_summary_and_provenance_come_from_the_derivatives(run, page):
    text = run["report"].read_text(encoding="utf-8")
    sidecar = json.loads(next(run["out"].glob("network/*desc-overlap_boldmap.json")).read_text())
    assert sidecar["NumberOfSubjects"] == 6
    summary = text[text.index('id="summary-list"'):text.index("</ul>", text.index("summary-list"))]
    assert "Connectome subjects:</span> 6" in summary
    seeds = pd.read_csv(run["out"] / "seeds.tsv", sep="\t")
    assert f"{len(seeds)} seeds" in summary
    assert "|t| &gt; 5.1" in summary and "MNI152NLin2009aAsym" in summary
    assert "versions" in page.ids and "settings" in page.ids
    for name in ("bids_cnm", "numpy", "nilearn", "nipype", "pybids"):
        assert f"<th>{name}</th>" in text, name
    assert "<th>t_threshold</th><td>5.1</td>" in text  # settings read from the sidecars
    assert "--nipype-plugin Linear" in text
    assert "bids_cnm coordinate network mapping" in text  # dataset_description.json


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


def _add_optional_outputs(out: Path) -> None:
    """Files of later analyses (sensitivity, specificity, validation, DBS) on the demo grid."""
    overlap = next(out.glob("network/*set-primary*desc-overlap_boldmap.nii.gz"))
    img = nb.load(overlap)
    data = np.asarray(img.dataobj, dtype=np.float32)
    prefix = overlap.name.split("_thresh-")[0]
    names = ["main", "thresh-4", "d9mm"]
    matrix = pd.DataFrame([[1.0, 0.9, 0.8], [0.9, 1.0, 0.7], [0.8, 0.7, 1.0]],
                          index=names, columns=names)
    matrix.insert(0, "variant", names)
    matrix.to_csv(out / f"{prefix}_desc-sensitivity_correlations.tsv", sep="\t", index=False)
    stem = f"{prefix}_control-control"
    nb.Nifti1Image(data * 40, img.affine).to_filename(out / f"{stem}_stat-tfce_boldmap.nii.gz")
    nb.Nifti1Image(np.abs(data) * 3, img.affine).to_filename(
        out / f"{stem}_stat-logpFWE_boldmap.nii.gz")
    rng = np.random.default_rng(0)
    pd.DataFrame({"group": ["IGE"] * 10 + ["HC"] * 10,
                  "overlap_pct": np.r_[rng.normal(30, 5, 10), rng.normal(10, 5, 10)]}).to_csv(
        out / f"{prefix}_desc-roioverlap_stats.tsv", sep="\t", index=False)
    (out / f"{prefix}_desc-roioverlap_stats.json").write_text(json.dumps({"p": 0.001}))
    nb.Nifti1Image(data * 0.5, img.affine).to_filename(
        out / f"{prefix}_desc-convergent_boldmap.nii.gz")
    (out / f"{prefix}_desc-dbs_stats.tsv").write_text("not\ta table\n\"unclosed\n")  # broken


def test_optional_sections_render_when_their_files_exist(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run["out"], out)
    _add_optional_outputs(out)
    page = parse(build_report(out))
    for section in ("opt-sensitivity", "opt-specificity", "opt-validation",
                    "opt-dbs-and-convergent-networks"):
        assert section in page.sections, section
        assert f"#{section}" in page.nav_links
    assert page.sections[-1] == "provenance"
    text = (out / REPORT_NAME).read_text(encoding="utf-8")
    assert next(out.glob("*_desc-roioverlap_stats.tsv")).name in page.tables
    assert len(page.images) > len(parse(run["report"]).images) + 5
    for img in page.images:
        png_size(base64.b64decode(img["src"].split(",", 1)[1]))
    # a file a renderer cannot read shows an error in place (and in the summary);
    # the rest of the report stands
    assert text.count('class="cnm-error"') == 1
    assert "cnm-error-list" in page.classes
    assert "desc-dbs_stats.tsv" in text[text.index('class="cnm-error"'):][:400]


def test_a_new_kind_of_output_is_one_registry_line(run, tmp_path):
    from bids_cnm.reports.optional import REGISTRY, Renderer, optional_sections, render_table
    from bids_cnm.reports.report import _make_context

    out = tmp_path / "out"
    shutil.copytree(run["out"], out)
    pd.DataFrame({"study": ["a", "b"], "score": [1.5, 2.5]}).to_csv(
        out / "space-MNI_desc-foo_stats.tsv", sep="\t", index=False)
    registry = [*REGISTRY, Renderer("*_desc-foo*.tsv", "Foo analysis", render_table)]
    sections = optional_sections(_make_context(out, None), registry)
    assert [s.title for s in sections] == ["Foo analysis"]
    assert "<td>2.5</td>" in sections[0].body
    assert optional_sections(_make_context(out, None)) == []  # not in the default registry


def test_name_parsing_and_matrix_layouts():
    from bids_cnm.reports.index import parse_name, threshold_value
    from bids_cnm.reports.optional import read_matrix

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
    from bids_cnm.reports.report import MAX_SEED_PANELS, _pick_seeds

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
def test_report_screenshot(run, tmp_path):
    """A full-width screenshot: the navigation bar is drawn, and the page is not blank."""
    from PIL import Image

    shot = tmp_path / "report.png"
    result = _chromium([f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars",
                        run["report"].as_uri()], tmp_path / "profile-shot")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    assert pixels.shape[:2] == (4000, 1280)
    navbar = pixels[5:40, :, :].reshape(-1, 3).mean(axis=0)
    assert np.all(np.abs(navbar - [0x34, 0x3A, 0x40]) < 30), navbar  # the dark fixed bar
    body = pixels[60:]
    assert (body.sum(axis=2) < 600).mean() > 0.02  # figures and text, not an empty page
