"""Generate ``docs/cli.md`` and ``boutiques.json`` from the argument parsers.

``docs/cli.md`` documents both commands: ``bids_cnm`` (:mod:`bids_cnm.cli.parser`) and
``bids_cnm-connectome`` (:mod:`bids_cnm.cli.connectome`).

Both files are committed; the tests compare them with what this module
generates, so an option added to :func:`bids_cnm.cli.parser.build_parser` that
is not documented fails the tests until they are regenerated.  The same command
rewrites the files generated from the analysis plan's schema (the key tables of
``docs/plan.md`` and ``bids_cnm/data/plan.schema.json``, see
:mod:`bids_cnm.plan.docs`)::

    python -m bids_cnm.cli.docs            # rewrite every generated file
    python -m bids_cnm.cli.docs --check    # exit 1 when one is out of date
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

from bids_cnm import __version__, errors
from bids_cnm.cli.parser import build_parser
from bids_cnm.plan.docs import PLAN_MD, SCHEMA_JSON, plan_markdown
from bids_cnm.plan.schema import schema_text

REPO = Path(__file__).resolve().parents[2]
CLI_MD = REPO / "docs" / "cli.md"
BOUTIQUES_JSON = REPO / "boutiques.json"

#: Path-valued arguments that bids_cnm creates (Boutiques ``String``, not ``File``).
CREATED_PATHS = frozenset({"output_dir", "work_dir"})

#: Defaults that depend on the machine the parser is built on, shown as text.
DYNAMIC_DEFAULTS = {"nprocs": "the number of CPUs, at most 8"}

#: Options that are not inputs of a run.
_SKIPPED_ACTIONS = (argparse._HelpAction, argparse._VersionAction)

_WIDTH = 88

#: the published container image (built and pushed by .github/workflows/release.yml)
IMAGE = "ghcr.io/bids-cnm/bids_cnm"


# ----------------------------------------------------------------------------- the parser


def run_actions(parser: argparse.ArgumentParser | None = None) -> list[argparse.Action]:
    """The arguments of a run: every action but ``--help`` and ``--version``."""
    parser = parser or build_parser()
    return [a for a in parser._actions if not isinstance(a, _SKIPPED_ACTIONS)]


def main_flag(action: argparse.Action) -> str | None:
    """The spelling used in docs and descriptors: the first ``--long`` option string.

    ``None`` for positional arguments.
    """
    if not action.option_strings:
        return None
    longs = [s for s in action.option_strings if s.startswith("--")]
    return (longs or action.option_strings)[0]


def _groups(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, list[argparse.Action]]]:
    """Argument groups in parser order (title, description, run actions), empty ones skipped."""
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, _SKIPPED_ACTIONS)]
        if actions:
            yield group.title or "options", group.description or "", actions


def _value_type(action: argparse.Action) -> type | None:
    """The Python type an action's ``type=`` callable returns (``None`` for strings)."""
    convert = action.type
    if convert is None or convert is str:
        return None
    if isinstance(convert, type):
        return convert
    try:
        hints = typing.get_type_hints(convert)
    except Exception:  # noqa: BLE001 - an un-annotated or unresolvable callable: text
        return None
    returned = hints.get("return")
    return returned if isinstance(returned, type) else None


def _minimum(action: argparse.Action) -> dict:
    """Boutiques bounds of a numeric action, probed from its ``type=`` callable."""
    convert = action.type
    if convert in (None, int, float) or not callable(convert):
        return {}

    def accepts(text: str) -> bool:
        try:
            convert(text)
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            return False
        return True

    if _value_type(action) is int:
        for low in (0, 1):
            if accepts(str(low)) and not accepts(str(low - 1)):
                return {"minimum": low}
        return {}
    if not accepts("0") and accepts("1e-9"):
        return {"minimum": 0, "exclusive-minimum": True}
    if accepts("0") and not accepts("-1e-9"):
        return {"minimum": 0}
    return {}


def _is_flag(action: argparse.Action) -> bool:
    return action.nargs == 0


def _is_list(action: argparse.Action) -> bool:
    return action.nargs in ("+", "*") or isinstance(action.nargs, int) and action.nargs > 1


def _default_text(action: argparse.Action) -> str | None:
    """The default as documented, or ``None`` when there is nothing to say."""
    if action.dest in DYNAMIC_DEFAULTS:
        return DYNAMIC_DEFAULTS[action.dest]
    default = action.default
    if default is None or default is argparse.SUPPRESS or _is_flag(action):
        return None
    if action.required or not action.option_strings:
        return None
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default) if default else None
    return str(default)


def _metavar(action: argparse.Action) -> str:
    if _is_flag(action):
        return ""
    if not action.option_strings:
        return action.dest
    formatter = argparse.HelpFormatter("bids_cnm")
    return formatter._format_args(action, action.dest.upper())


# ----------------------------------------------------------------------------- cli.md


def cli_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The command-line reference as Markdown (the content of ``docs/cli.md``)."""
    parser = parser or build_parser()
    formatter = argparse.HelpFormatter(parser.prog, width=_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    usage = formatter.format_help().strip()
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated by `python -m bids_cnm.cli.docs` from bids_cnm/cli/parser.py;",
        "     do not edit: tests/test_docs.py fails when this file is out of date. -->",
        "",
        _wrap(parser.description or ""),
        "",
        "```text",
        usage,
        "```",
        "",
        ("Options may be abbreviated as long as the abbreviation is unique. "
         "`--version` prints the version and `--help` (`-h`) this reference."),
        "",
    ]
    for title, description, actions in _groups(parser):
        heading = title[:1].upper() + title[1:]
        lines += [f"## {heading}", ""]
        if description:
            lines += [_wrap(description[:1].upper() + description[1:] + "."), ""]
        for action in actions:
            lines += _action_markdown(action)
        lines.append("")
    lines += [
        "## Running the same command again",
        "",
        _wrap("A run that stopped (killed, interrupted, a step that failed) resumes: finished "
              "steps are reused from the work directory. A group run that finished is only "
              "verified: when the run record (`OUTPUT_DIR/logs/bids_cnm_run.json`) shows the "
              "same options (but `-v`, `--mem-mb`, `--omp-nthreads`, `--nipype-plugin` and "
              "`--stop-on-first-crash`, which change how a run goes, not its maps; the "
              "verified folder keeps the command of the run that wrote it), the same "
              "input files (the connectome's folder, the coordinates, "
              "`--relocation-mask`, `--compare-connectome`, `--plugin-config`, `--analysis` "
              "and every file the plan names, also in its tables: path, size, modification "
              "and change time, inode, a link's target) and every output unchanged since that run, the run "
              "logs `nothing to do: every output is up to date` and exits 0 without touching "
              "any file (0.2-0.5 s for a 30-subject connectome or the demo, measured on 2 busy "
              "cores; the full path takes about 7 s on a 30-subject connectome). Anything else takes the full path and logs why "
              "(`re-run check: ...`); an output removed or modified since is written again. "
              "A run with `--clean-workdir`, and the participant level, always take the full "
              "path (see docs/guarantees.md)."),
        "",
        _wrap("**After an upgrade** (or any change of the installed package's files, as in a "
              "development install), the outputs and cached steps of the earlier bids_cnm "
              "are not this run's: the same command (after a finished group run) logs "
              "`re-run check: the earlier run was made by other bids_cnm code "
              "(<version>+<digest>; this is ...)`, and it is refused with exit 64 "
              "(`version: ... there, ... now`, or `code: ...` for the same version); add "
              "`--overwrite` to replace them, or choose another OUTPUT_DIR. Every step then "
              "runs again with the new code; the prepared time series in the work folder are "
              "kept (they carry a layout version of their own; with `--no-cache` there are "
              "none, and the connectome is decoded again)."),
        "",
        "## Exit codes",
        "",
        "| code | meaning |",
        "| ---: | --- |",
        "| 0 | success |",
    ]
    for code, name, doc in exit_codes():
        lines.append(f"| {code} | {doc} (`{name}`) |")
    lines += [
        "| 130 | interrupted (Ctrl-C); run the same command again to resume |",
        "",
        ("Every error ends with one line, `bids_cnm: error: ...`, that says what is wrong "
         "and how to fix it."),
        "",
    ]
    lines += connectome_markdown()
    return "\n".join(lines)


def connectome_markdown(parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Lines of the ``bids_cnm-connectome`` section of ``docs/cli.md`` (every subcommand).

    Parameters
    ----------
    parser : ArgumentParser, optional
        :func:`bids_cnm.cli.connectome.build_parser` when omitted.

    Returns
    -------
    list of str
    """
    from bids_cnm.cli import connectome

    parser = parser or connectome.build_parser()
    lines = [f"## `{parser.prog}`", "", _wrap(parser.description or ""), ""]
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {c.dest: c.help for a in subparsers for c in a._choices_actions}
    for action in subparsers:
        for name, sub in action.choices.items():
            formatter = argparse.HelpFormatter(sub.prog, width=_WIDTH)
            formatter.add_usage(sub.usage, sub._actions, sub._mutually_exclusive_groups)
            summary = helps.get(name) or ""
            lines += [f"### `{sub.prog}`", ""]
            if summary:
                lines += [_wrap(summary[:1].upper() + summary[1:] + "."), ""]
            lines += ["```text", formatter.format_help().strip(), "```", ""]
            for arg in run_actions(sub):
                arg = copy.copy(arg)  # adjusted for the page only
                if not arg.option_strings and arg.metavar:
                    arg.dest = arg.metavar  # a positional is shown as its usage line shows it
                help_text = arg.help or ""
                if "(default" in help_text:
                    arg.default = None  # the help says it (also in --help): not twice
                if "one of:" in help_text:
                    arg.choices = None
                lines += _action_markdown(arg)
            lines.append("")
    lines += [
        ("Its exit codes are those of `bids_cnm` above; an error ends with one line, "
         f"`{parser.prog}: error: ...`."),
        "",
    ]
    return lines


def _action_markdown(action: argparse.Action) -> list[str]:
    metavar = _metavar(action)
    if action.option_strings:
        shown = main_flag(action) + (f" {metavar}" if metavar else "")
    else:
        shown = metavar
    entry = f"- `{shown}`"
    others = [s for s in action.option_strings if s != main_flag(action)]
    if others:
        entry += " (also " + ", ".join(f"`{s}`" for s in others) + ")"
    notes = []
    if action.required and action.option_strings:
        notes.append("required")
    if action.choices is not None:
        notes.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    default = _default_text(action)
    if default is not None:
        notes.append(f"default `{default}`" if action.dest not in DYNAMIC_DEFAULTS
                     else f"default: {default}")
    text = _markdown_text((action.help or "").strip())
    text = text[:1].upper() + text[1:]
    if text and not text.endswith("."):
        text += "."
    if notes:
        note = "; ".join(notes)
        text = (text + " " if text else "") + note[:1].upper() + note[1:] + "."
    return [entry + (": " + text if text else "")]


def _markdown_text(text: str) -> str:
    """Help text as Markdown: angle brackets escaped so they are not read as HTML."""
    return text.replace("<", "\\<").replace(">", "\\>")


def _wrap(text: str) -> str:
    import textwrap

    # an option is never cut at its hyphens
    return "\n".join(textwrap.wrap(text, width=_WIDTH, break_on_hyphens=False)) if text else ""


def exit_codes() -> list[tuple[int, str, str]]:
    """(code, error class, first docstring line) of every user-facing error."""
    found = []
    for name, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.CNMError) and cls is not errors.CNMError:
            doc = (cls.__doc__ or name).strip().splitlines()[0]
            doc = doc.split(" (exit code")[0].rstrip(".")
            found.append((cls.exit_code, name, doc))
    return sorted(found)


# ----------------------------------------------------------------------------- boutiques


def boutiques_input(action: argparse.Action) -> dict:
    """The Boutiques input of one argparse action."""
    value_key = f"[{action.dest.upper()}]"
    entry: dict = {
        "id": action.dest,
        "name": action.dest.replace("_", " ").capitalize(),
        "value-key": value_key,
        "optional": not (action.required or not action.option_strings),
    }
    if action.help:
        entry["description"] = action.help.strip()
    if action.dest == "verbosity":
        entry["name"] = "Verbose"
    entry["name"] = entry["name"].replace("Bids", "BIDS")
    flag = main_flag(action)
    if flag:
        entry["command-line-flag"] = flag
    if _is_flag(action):
        entry["type"] = "Flag"
        return entry
    value_type = _value_type(action)
    if value_type is Path:
        entry["type"] = "String" if action.dest in CREATED_PATHS else "File"
    elif value_type in (int, float):
        entry["type"] = "Number"
        if value_type is int:
            entry["integer"] = True
        entry.update(_minimum(action))
    else:
        entry["type"] = "String"
    if action.choices is not None:
        entry["value-choices"] = list(action.choices)
    if _is_list(action):
        entry["list"] = True
        if action.nargs == "+":
            entry["min-list-entries"] = 1
    default = action.default
    if (
        entry["optional"]
        and action.dest not in DYNAMIC_DEFAULTS
        and default not in (None, [], (), argparse.SUPPRESS)
        and entry["type"] != "File"
    ):
        entry["default-value"] = list(default) if isinstance(default, (list, tuple)) else default
    return entry


def boutiques_descriptor(parser: argparse.ArgumentParser | None = None) -> dict:
    """The complete Boutiques descriptor (schema 0.5) of the command line."""
    parser = parser or build_parser()
    actions = run_actions(parser)
    positional = [a for a in actions if not a.option_strings]
    optional = [a for a in actions if a.option_strings]
    command = " ".join(["bids_cnm"] + [f"[{a.dest.upper()}]" for a in positional + optional])
    groups = []
    for title, description, members in _groups(parser):
        if not all(a.option_strings for a in members):
            continue  # the positional arguments
        group = {
            "id": "group_" + "".join(c if c.isalnum() else "_" for c in title).strip("_"),
            "name": title[:1].upper() + title[1:],
            "members": [a.dest for a in members],
        }
        if description:
            group["description"] = description[:1].upper() + description[1:] + "."
        groups.append(group)
    return {
        "name": "bids_cnm",
        "tool-version": __version__,
        "schema-version": "0.5",
        "description": (
            "Coordinate network mapping as a BIDS App: a sphere at every reported MNI "
            "coordinate, each study's seed connectivity in a normative resting-state "
            "connectome (BIDS derivatives), one-sample t-maps across its subjects, "
            "thresholded networks and their overlap across studies."
        ),
        "author": "The bids_cnm developers",
        "url": "https://github.com/bids-cnm/bids_cnm",
        "command-line": command,
        "container-image": {
            "type": "docker",
            "image": f"{IMAGE}:{__version__}",
            "entrypoint": True,
        },
        "inputs": [boutiques_input(a) for a in actions],
        "groups": groups,
        "output-files": [
            {
                "id": "derivatives",
                "name": "Output directory",
                "description": "The BIDS derivatives dataset written by bids_cnm.",
                "path-template": "[OUTPUT_DIR]",
                "optional": False,
            },
            {
                "id": "dataset_description",
                "name": "Dataset description",
                "description": "dataset_description.json of the derivatives "
                "(GeneratedBy records the version and container).",
                "path-template": "[OUTPUT_DIR]/dataset_description.json",
                "optional": False,
            },
            {
                "id": "seeds_table",
                "name": "Seeds table",
                "description": "seeds.tsv: one row per seed (group level).",
                "path-template": "[OUTPUT_DIR]/seeds.tsv",
                "optional": True,
            },
            {
                "id": "overlap_map",
                "name": "Overlap network of the primary set",
                "description": "Signed overlap (n_positive - n_negative) / n_studies of "
                "the thresholded seed networks of the 'primary' coordinate set (group "
                "level).",
                "path-template": (
                    "[OUTPUT_DIR]/network/*_set-primary_thresh-*_desc-overlap_boldmap.nii.gz"
                ),
                "optional": True,
            },
            {
                "id": "report",
                "name": "HTML report",
                "description": "bids_cnm_report.html: a self-contained report of the group "
                "level's results.",
                "path-template": "[OUTPUT_DIR]/bids_cnm_report.html",
                "optional": True,
            },
            {
                "id": "participant_zmaps",
                "name": "Participant z-maps",
                "description": "Fisher-z map of every seed for each connectome subject "
                "(participant level).",
                "path-template": "[OUTPUT_DIR]/sub-*/func/sub-*_stat-z_boldmap.nii.gz",
                "optional": True,
            },
        ],
        "error-codes": [
            {"code": code, "description": doc} for code, _, doc in exit_codes()
        ],
        "suggested-resources": {"cpu-cores": 8, "ram": 16, "walltime-estimate": 7200},
        "tags": {
            "domain": ["neuroinformatics", "fmri", "bids", "bids-app"],
            "application": "coordinate network mapping",
        },
    }


def boutiques_text(parser: argparse.ArgumentParser | None = None) -> str:
    """``boutiques.json`` as written to disk."""
    return json.dumps(boutiques_descriptor(parser), indent=2, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Write (or ``--check``) docs/cli.md, boutiques.json and the plan's generated files."""
    cli = argparse.ArgumentParser(prog="python -m bids_cnm.cli.docs", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_argument("--check", action="store_true",
                     help="exit 1 when a generated file differs from the committed one")
    args = cli.parse_args(argv)
    stale = []
    generated = ((CLI_MD, cli_markdown()), (BOUTIQUES_JSON, boutiques_text()),
                 (PLAN_MD, plan_markdown(PLAN_MD.read_text())), (SCHEMA_JSON, schema_text()))
    for path, text in generated:
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    for path in stale:
        print(f"{path.relative_to(REPO)} is out of date: run python -m bids_cnm.cli.docs",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
