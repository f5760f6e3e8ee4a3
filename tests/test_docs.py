"""The documentation builds without warnings and agrees with the code.

``docs/cli.md`` is generated from the argument parser (``python -m bids_cnm.cli.docs``);
``docs/outputs.md`` must name every entity the outputs use, in the order the code writes
them; the Sphinx build treats every warning (a broken link, a missing page) as an error.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import REPO

from bids_cnm.cli import docs
from bids_cnm.cli.parser import build_parser
from bids_cnm.io.derivatives import ENTITY_ORDER, PYBIDS_CONFIG

DOCS = REPO / "docs"
PAGES = ("index", "installation", "tutorial", "inputs", "outputs", "methods", "cli", "cluster")


def test_cli_md_is_generated_from_the_parser():
    assert (DOCS / "cli.md").read_text() == docs.cli_markdown(), (
        "docs/cli.md differs from the parser: run `python -m bids_cnm.cli.docs`"
    )


def test_cli_md_lists_every_option():
    text = (DOCS / "cli.md").read_text()
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert f"`{option}" in text, option


def test_cli_md_documents_the_connectome_command():
    """Every subcommand, argument and option of bids_cnm-connectome has its entry."""
    import argparse

    from bids_cnm.cli import connectome

    text = (DOCS / "cli.md").read_text()
    parser = connectome.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert commands.choices, "bids_cnm-connectome has subcommands"
    for name, sub in commands.choices.items():
        assert f"### `bids_cnm-connectome {name}`" in text
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            shown = action.option_strings or [action.metavar or action.dest]
            for option in shown:
                assert f"- `{option}" in text or f"(also `{option}`" in text, option


def test_cli_md_does_not_depend_on_the_machine(monkeypatch):
    """A default computed from the CPU count would make the committed file drift."""
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    one = docs.cli_markdown(build_parser())
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert docs.cli_markdown(build_parser()) == one
    monkeypatch.setenv("COLUMNS", "40")
    assert docs.cli_markdown(build_parser()) == one


def test_check_mode_reports_up_to_date(capsys):
    assert docs.main(["--check"]) == 0, capsys.readouterr().err


def test_outputs_md_documents_every_entity():
    text = (DOCS / "outputs.md").read_text()
    config = json.loads(PYBIDS_CONFIG.read_text())
    for entity in config["entities"]:
        assert f"`{entity['name']}-<" in text, f"entity {entity['name']} not in outputs.md"
    order = re.search(r"```text\n(sub .*?)\n```", text, re.S)
    assert order, "outputs.md must show the entity order in a text block"
    assert order.group(1).split() == list(ENTITY_ORDER)


def test_pages_are_in_the_toctree():
    index = (DOCS / "index.md").read_text()
    for page in PAGES:
        assert (DOCS / f"{page}.md").exists(), page
    for path in DOCS.glob("*.md"):
        if path.stem != "index":
            assert f"\n{path.stem}\n" in index, f"docs/{path.name} is not in index.md's toctree"


def test_readme_links_exist():
    readme = (REPO / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPO / link).exists(), link


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    for page in PAGES:
        assert (tmp_path / "html" / f"{page}.html").exists(), page
    methods = (tmp_path / "html" / "methods.html").read_text()
    assert "math" in methods  # the equations were parsed as math, not left as text


def test_plan_md_tables_are_generated_from_the_schema():
    from bids_cnm.plan.docs import PLAN_MD, plan_markdown

    text = PLAN_MD.read_text()
    assert text.count("<!-- plan-schema: ") == 9
    assert text == plan_markdown(text), (
        "docs/plan.md's key tables differ from bids_cnm/plan/schema.py: run "
        "`python -m bids_cnm.cli.docs`")


def test_one_vocabulary_for_options():
    """Each shared option is described once (config.DOCS): the parser's help, the Config
    docstring and the interfaces' trait desc all carry that text."""
    import textwrap

    from bids_cnm.cli.parser import build_parser
    from bids_cnm.config import DOCS, Config
    from bids_cnm.interfaces.cnm import (
        AccumulateConnectivity,
        DegreeSample,
        Specificity,
    )

    helps = {a.dest: a.help for a in build_parser()._actions}
    doc = " ".join(Config.__doc__.split())
    for name, text in DOCS.items():
        assert helps[name] == text, name
        assert " ".join(textwrap.fill(text, 1000).split()) in doc.replace(
            text[:1].upper() + text[1:], text), name
    assert "%(" not in Config.__doc__
    traits = {
        "seed_signal": AccumulateConnectivity().inputs.trait("seed_signal").desc,
        "run_combination": AccumulateConnectivity().inputs.trait("run_combination").desc,
        "n_permutations": Specificity().inputs.trait("n_permutations").desc,
        "degree_samples": DegreeSample().inputs.trait("n_samples").desc,
    }
    for name, desc in traits.items():
        assert desc == DOCS[name], name
