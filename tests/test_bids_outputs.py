"""The outputs as BIDS derivatives (validator, sidecars, layout) and the NiPreps-style
command line (configuration file, boilerplate, filters, usage errors)."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import pandas as pd
import pytest

from bids_cnm.cli.parser import build_parser, parse_args
from bids_cnm.cli.run import main
from bids_cnm.errors import EX_DATAERR, EX_NOINPUT, EX_USAGE

VALIDATOR = shutil.which("bids-validator-deno")


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tiny_connectome, tiny_coordinates, tmp_path_factory):
    """A participant run, then a group run with sensitivity variants and specificity."""
    root = tmp_path_factory.mktemp("bidsout")
    out, work = root / "out", root / "work"
    common = ["--coordinates", tiny_coordinates, "-w", work, "--nprocs", "2"]
    assert run_cli(tiny_connectome, out, "participant", "--participant-label", "01",
                   *common) == 0
    assert run_cli(tiny_connectome, out, "group", *common, "--t-thresholds", "4.7",
                   "--sphere-diameters", "9", "--specificity", "--n-permutations", "20",
                   "--random-relocations", "1", "--no-tfce") == 0
    return out


def _errors(folder: Path) -> list[dict]:
    done = subprocess.run([VALIDATOR, "--format", "json", str(folder)], capture_output=True,
                          text=True, timeout=600)
    issues = json.loads(done.stdout)["issues"]["issues"]
    return [i for i in issues if i["severity"] == "error"]


@pytest.mark.skipif(VALIDATOR is None, reason="bids-validator-deno is not installed")
def test_validator_passes_demo_input(tmp_path):
    from bids_cnm.demo.data import make_demo_dataset

    demo = make_demo_dataset(tmp_path, n_subjects=2, n_volumes=20, resolution=4)
    assert _errors(demo.bids_dir) == []


@pytest.mark.skipif(VALIDATOR is None, reason="bids-validator-deno is not installed")
def test_validator_passes_participant_and_group_outputs(runs):
    assert (runs / "sub-01" / "func").is_dir() and (runs / "network").is_dir()
    assert _errors(runs) == []


def test_group_outputs_in_analysis_folders(runs):
    folders = {p.name for p in runs.iterdir() if p.is_dir()}
    assert folders == {"sub-01", "logs", "seeds", "network", "sensitivity", "specificity",
                       "degree", "validation"}
    ignored = (runs / ".bidsignore").read_text().split()
    for folder in folders - {"sub-01"}:
        assert f"/{folder}" in ignored
    # the entities stay in the names: every file in a folder parses as entities + suffix
    from bids_cnm.reports.index import parse_name

    for path in runs.glob("*/*.nii.gz"):
        assert parse_name(path.name) is not None, path


def test_every_table_has_column_descriptions(runs):
    tables = sorted(runs.rglob("*.tsv"))
    assert len(tables) >= 8
    for tsv in tables:
        sidecar = json.loads(tsv.with_suffix(".json").read_text())
        columns = pd.read_csv(tsv, sep="\t", nrows=0).columns
        missing = [c for c in columns if "Description" not in sidecar.get(c, {})]
        assert not missing, f"{tsv.name}: {missing}"


def test_sidecars_cite_sources_as_bids_uris(runs):
    description = json.loads((runs / "dataset_description.json").read_text())
    links = description["DatasetLinks"]
    assert {"connectome", "coordinates"} <= set(links)
    for sidecar in runs.rglob("*.json"):
        if sidecar.parent.name == "logs":
            continue
        content = json.loads(sidecar.read_text())
        for source in content.get("Sources", []):
            assert source.startswith("bids:"), (sidecar.name, source)
            assert source.split(":")[1] in links or source.startswith("bids::")
        # the settings that shaped the file, not the whole configuration
        assert "n_permutations" not in content.get("bids_cnm", {}), sidecar.name
        assert "output_dir" not in content.get("bids_cnm", {}), sidecar.name
    participant = next((runs / "sub-01" / "func").glob("*_stat-z_boldmap.json"))
    assert json.loads(participant.read_text())["Sources"][0].startswith("bids:connectome:sub-01/")


def test_one_spelling_of_thresholds(runs):
    table = pd.read_csv(next(runs.glob("sensitivity/*_desc-sensitivity_variants.tsv")),
                        sep="\t")
    row = table[table["threshold"] == 4.7].iloc[0]
    assert row["variant"] == "thresh-4p7"
    assert "_thresh-4p7_" in row["file"] and (runs / row["file"]).is_file()
    assert set(table["variant"]) >= {"main", "d9mm"}


def test_config_file_repeats_the_run(runs, tiny_connectome, tiny_coordinates):
    toml = runs / "logs" / "bids_cnm.toml"
    original = parse_args([str(tiny_connectome), str(runs), "group", "--coordinates",
                           str(tiny_coordinates), "--t-thresholds", "4.7",
                           "--sphere-diameters", "9", "--specificity",
                           "--n-permutations", "20", "--random-relocations", "1",
                           "--no-tfce"])
    again = parse_args([str(tiny_connectome), str(runs), "group", "--config-file", str(toml)])
    assert again.science_settings() == original.science_settings()
    assert again.coordinates == original.coordinates
    # the command line wins over the file
    other = parse_args([str(tiny_connectome), str(runs), "group", "--config-file", str(toml),
                        "--t-threshold", "3"])
    assert other.t_threshold == 3.0 and other.t_thresholds == (4.7,)


def test_boilerplate_says_what_ran(runs):
    text = (runs / "logs" / "CITATION.md").read_text()
    assert "6 mm" in text and "|t| > 5.1" in text and "thresholds 4.7" in text
    assert "20 label permutations" in text and "degree" in text
    assert "threshold-free" not in text  # --no-tfce
    bib = (runs / "logs" / "CITATION.bib").read_text()
    for key in ("ji2025", "nipype", "nilearn", "nichols2002"):
        assert f"{{{key}," in bib
    assert "@tfce" not in text and "{tfce," not in bib
    assert "<cite>" in (runs / "logs" / "CITATION.html").read_text()


def test_boilerplate_only_runs_nothing(tiny_connectome, tiny_coordinates, tmp_path):
    out = tmp_path / "out"
    assert run_cli(tiny_connectome, out, "group", "--coordinates", tiny_coordinates,
                   "-w", tmp_path / "work", "--sphere-diameter", "8", "--specificity",
                   "--boilerplate-only") == 0
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [
        "CITATION.bib", "CITATION.html", "CITATION.md", "bids_cnm.toml"]
    text = (out / "logs" / "CITATION.md").read_text()
    assert "8 mm" in text and "threshold-free cluster enhancement" in text
    assert not (tmp_path / "work").exists()


def test_failed_checks_leave_no_folders(tiny_connectome, tmp_path, capsys):
    out, work = tmp_path / "new" / "out", tmp_path / "new" / "work"
    bad = tmp_path / "bad.tsv"
    bad.write_text("study\tx\ty\nA\t1\t2\n")
    assert run_cli(tiny_connectome, out, "group", "--coordinates", bad, "-w", work) \
        == EX_DATAERR
    assert not out.exists() and not work.exists()
    # the coordinates are checked before the connectome is indexed
    code = run_cli(tmp_path / "no_connectome", out, "group", "--coordinates", bad)
    assert code == EX_DATAERR and "bad.tsv" in capsys.readouterr().err


def test_bids_filter_file(tiny_connectome, tiny_coordinates, tmp_path, capsys):
    from bids_cnm.cli.config_file import load_bids_filters
    from bids_cnm.io.connectome import index_connectome

    path = tmp_path / "filter.json"
    path.write_text(json.dumps({"bold": {"run": 2}}))
    filters = load_bids_filters(path)
    connectome = index_connectome(tiny_connectome, filters=filters["bold"])
    assert [s.label for s in connectome.subjects] == ["01"]  # the only subject with run-2
    config = parse_args([str(tiny_connectome), str(tmp_path / "o"), "group", "--coordinates",
                         str(tiny_coordinates), "--bids-filter-file", str(path)])
    assert config.bids_filters == {"bold": {"run": 2}}
    path.write_text(json.dumps({"anat": {}}))
    code = run_cli(tiny_connectome, tmp_path / "o", "group", "--coordinates",
                   tiny_coordinates, "--bids-filter-file", path)
    assert code == EX_DATAERR and "'bold'" in capsys.readouterr().err
    code = run_cli(tiny_connectome, tmp_path / "o", "group", "--coordinates",
                   tiny_coordinates, "--bids-filter-file", tmp_path / "none.json")
    assert code == EX_NOINPUT
    # the sidecars' metadata are not indexed (files are selected by entities): a filter on
    # a metadata key is refused with pybids' reason, not silently matched against nothing
    sidecar = json.loads(next(tiny_connectome.rglob("*_bold.json")).read_text())
    key = next(k for k in ("RepetitionTime", "SkullStripped", "Resolution") if k in sidecar)
    path.write_text(json.dumps({"bold": {key: sidecar[key]}}))
    capsys.readouterr()
    code = run_cli(tiny_connectome, tmp_path / "o", "group", "--coordinates",
                   tiny_coordinates, "--bids-filter-file", path)
    err = capsys.readouterr().err
    assert code == EX_USAGE and f"--bids-filter-file: '{key}' is not a recognized entity" in err


def test_memory_and_thread_options(tiny_connectome, tiny_coordinates, tmp_path):
    base = [str(tiny_connectome), str(tmp_path / "o"), "group", "--coordinates",
            str(tiny_coordinates)]
    assert parse_args(base + ["--mem-mb", "2048"]).mem_gb == 2.0
    assert parse_args(base + ["--mem-gb", "3"]).mem_gb == 3.0
    config = parse_args(base + ["--omp-nthreads", "2", "--clean-workdir",
                                "--stop-on-first-crash", "--notrack"])
    assert (config.omp_nthreads, config.clean_workdir, config.stop_on_first_crash) == (
        2, True, True)


def test_usage_errors_on_stderr_with_suggestion(tiny_connectome, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args([str(tiny_connectome), str(tmp_path), "group", "--coordinats", "c.tsv"])
    assert exc.value.code == EX_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "did you mean --coordinates?" in captured.err
    toml = tmp_path / "c.toml"
    toml.write_text('t-treshold = 4\n')
    code = run_cli(tiny_connectome, tmp_path / "o", "group", "--coordinates", "c.tsv",
                   "--config-file", toml)
    assert code == EX_USAGE and "did you mean 't_threshold'" in capsys.readouterr().err


def test_help_shows_each_default_once():
    parser = build_parser()
    text = parser.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help:
            shown = formatter._get_help_string(action) % {"default": action.default}
            assert shown.count("default") <= 1, action.option_strings
    assert "(default: 5000)" in " ".join(text.split())
    permutations = next(a for a in parser._actions if "--n-permutations" in a.option_strings)
    assert "permutations" in permutations.help


def test_demo_help_describes_options(capsys):
    from bids_cnm.demo import main as demo_main

    with pytest.raises(SystemExit):
        demo_main(["--help"])
    text = capsys.readouterr().out
    options = " ".join(text.split("options:", 1)[1].split())  # the options' section
    for option, words in (("--n-subjects N_SUBJECTS", "subjects"),
                          ("--n-volumes N_VOLUMES", "volumes"),
                          ("--resolution {2,3,4}", "voxel size"),
                          ("--nprocs NPROCS", "processes")):
        assert f"{option} {words}" in options.replace("BOLD volumes", "volumes"), option


def test_warnings_are_one_log_line(caplog):
    import logging

    from bids_cnm.cli.record import route_warnings

    # not under "bids_cnm", whose handler does not propagate to caplog's
    logger = logging.getLogger("test_bids_outputs.warnings")
    with warnings.catch_warnings():  # restores warnings.showwarning afterwards
        warnings.simplefilter("always")
        route_warnings(logger)
        with caplog.at_level(logging.WARNING, logger=logger.name):
            warnings.warn("permutation floor: p >= 1/21", stacklevel=1)
            warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
    assert [r.getMessage() for r in caplog.records] == [
        "permutation floor: p >= 1/21", "deprecated thing (DeprecationWarning)"]
