"""Names that become labels in file names must stay distinct.

BIDS labels keep letters and digits only (:func:`~bids_cnm.engine.seeds.seed_label`),
so different names can become one label: sets ``ctl-a`` and ``ctla``, subgroup
levels ``J-ME`` and ``JME``, studies ``a/b`` and ``ab``, or a study ``P1d9mm``
beside the 9 mm variant of study ``P1``.  Their files would overwrite each other.
Such collisions are refused before any computation (exit 65), naming both names,
rather than renamed behind the user's back.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from bids_cnm.engine.seeds import Seeds, seed_label
from bids_cnm.errors import InputDataError

__all__ = ["check_labels", "check_seed_ids"]


def _distinct(names: Iterable[tuple[str, str]], what: str, source: str, fix: str) -> None:
    """Refuse two different names (with descriptions) that give one label."""
    seen: dict[str, tuple[str, str]] = {}
    for label, name in names:
        if label in seen and seen[label][1] != name:
            raise InputDataError(
                f"{source}: {what} {seen[label][0]!r} and {name!r} both become the label "
                f"'{label}' in file names (only letters and digits are kept); {fix}."
            )
        seen.setdefault(label, (name, name))


def check_labels(table: pd.DataFrame, subgroups: Iterable[str], source: str) -> None:
    """Refuse set, study and subgroup-level names whose file-name labels collide.

    Parameters
    ----------
    table : DataFrame
        The coordinate table (``set``, ``study`` and the subgroup columns).
    subgroups : iterable of str
        Columns whose levels name subgroup variants.
    source : str
        The coordinate file, in messages.

    Raises
    ------
    InputDataError
        Naming both names and the label they share (exit 65).
    """
    sets = dict.fromkeys(map(str, table["set"]))
    _distinct(((seed_label(s), s) for s in sets), "sets", source, "rename one of them")
    studies = dict.fromkeys(map(str, table["study"]))
    _distinct(((seed_label(s), s) for s in studies), "studies", source,
              "rename one of them in its 'study' column")
    for column in subgroups:
        levels = dict.fromkeys(v for value in table[column].astype(str)
                               for v in value.split("+") if v)
        tags = [(seed_label(f"{column}{level}"), level) for level in levels]
        tags += [(seed_label(f"{column}Without{level}"), f"without {level}") for level in levels]
        _distinct(tags, f"levels of column '{column}'", source, "rename one of them")


def check_seed_ids(parts: Iterable[Seeds], source: str) -> None:
    """Refuse seeds of different studies or variants that got one id.

    Parameters
    ----------
    parts : iterable of Seeds
        Everything that goes into one pass (main seeds, variants, relocated, plan seeds).
    source : str
        The coordinate file, in messages.
    """
    seen: dict[str, str] = {}
    for part in parts:
        for seed_id, study, variant in zip(part.table["id"], part.table["study"],
                                           part.table["variant"]):
            name = f"study {study!r}" + ("" if variant == "main" else f" (variant {variant})")
            if seed_id in seen:
                raise InputDataError(
                    f"{source}: {seen[seed_id]} and {name} both get the seed id '{seed_id}' "
                    "in file names; rename the study."
                )
            seen[seed_id] = name
