"""Tests of bids_cnm.io.coordinates: tables, Sleuth files and NiMARE JSON."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_cnm.errors import InputDataError, MissingInputError, ReadError
from bids_cnm.io.coordinates import (
    COORDINATE_COLUMNS,
    OUTPUT_COLUMNS,
    read_coordinates,
    summarize,
    validate_coordinates,
)

nimare = pytest.importorskip("nimare")
from nimare.dataset import Dataset  # noqa: E402
from nimare.io import convert_sleuth_to_dataset, convert_sleuth_to_dict  # noqa: E402
from nimare.utils import tal2mni  # noqa: E402

NIMARE_DATA = os.path.join(os.path.dirname(nimare.__file__), "tests", "data")

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # NiMARE 0.22 deprecates Dataset
    pytest.mark.filterwarnings("ignore:No mask or target space:UserWarning"),
]


@pytest.fixture(scope="module")
def nimare_reference():
    """Build NiMARE's own Dataset of a file, coordinates converted into an MNI target.

    The Datasets share one fitted masker on a tiny mask, which spares NiMARE
    loading and fitting its 2 mm template each time (about a second); the mask
    does not change the coordinates, only the target space does.
    """
    from nimare.utils import get_masker

    masker = get_masker(nib.Nifti1Image(np.ones((2, 2, 2), dtype=np.uint8), np.eye(4)))

    def build(source, target="mni152_2mm"):
        source = str(source)
        if source.endswith(".txt"):
            source = convert_sleuth_to_dict(source)  # what convert_sleuth_to_dataset does
        return Dataset(source, target=target, mask=masker)

    return build


def write(tmp_path, name, text):
    """Write ``text`` to ``tmp_path / name`` and return the path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def location(path, row=None, column=None):
    """Regex matching the file name, row and column in an error message."""
    pattern = re.escape(path.name)
    if row is not None:
        pattern += rf".*\brow {row}\b"
    if column is not None:
        pattern += rf".*\bcolumn '{re.escape(column)}'"
    return pattern


GOOD_TSV = (
    "Study\t X \ty\tz\tset\tspace\tsubtype\tmodality\tdoi\tN\n"
    "2019\t-42\t-20\t56\tdisc\tMNI\tTRD\tfMRI\t10.1/abc\t25\n"
    "\n"  # blank lines are skipped but still counted in row numbers
    "Smith 2020 \t 12.5\t-4\t-8\t\tmni152\t\tPET\t\t30\n"
    "Smith 2020\t0\t0\t0\trepl\tICBM\t\t\t\t30\n"
)


# --------------------------------------------------------------------------- tables


def test_good_tsv_round_trip(tmp_path):
    path = write(tmp_path, "coords.tsv", GOOD_TSV)
    table = read_coordinates(path)

    assert list(table.columns) == list(OUTPUT_COLUMNS) + ["doi", "N"]
    assert isinstance(table.index, pd.RangeIndex)
    assert len(table) == 3
    # numeric-looking study names stay strings; whitespace stripped
    assert table["study"].tolist() == ["2019", "Smith 2020", "Smith 2020"]
    assert all(isinstance(value, str) for value in table["study"])
    for axis in "xyz":
        assert table[axis].dtype == np.float64
    np.testing.assert_allclose(table[["x", "y", "z"]], [[-42, -20, 56], [12.5, -4, -8], [0, 0, 0]])
    assert table["set"].tolist() == ["disc", "primary", "repl"]
    assert table["space"].tolist() == ["MNI", "MNI", "MNI"]
    assert table["subtype"].tolist() == ["TRD", "", ""]
    assert table["modality"].tolist() == ["fMRI", "PET", ""]
    assert table["source_row"].tolist() == [2, 4, 5]
    # metadata columns kept unchanged, as strings
    assert table["doi"].tolist() == ["10.1/abc", "", ""]
    assert table["N"].tolist() == ["25", "30", "30"]


def test_default_set(tmp_path):
    path = write(tmp_path, "coords.tsv", "study\tx\ty\tz\ns1\t1\t2\t3\ns2\t4\t5\t6\n")
    assert read_coordinates(path)["set"].tolist() == ["primary", "primary"]
    assert read_coordinates(path, default_set="discovery")["set"].tolist() == ["discovery"] * 2
    # without a space column everything is MNI; absent text columns are ''
    table = read_coordinates(path)
    assert table["space"].tolist() == ["MNI", "MNI"]
    assert table["subtype"].tolist() == ["", ""]
    assert table["modality"].tolist() == ["", ""]
    with pytest.raises(ValueError):
        read_coordinates(path, default_set="  ")


def test_tal_converted_to_mni(tmp_path):
    # three TAL rows: the 3x3 case where tal2mni has to guess the orientation
    tal = np.array([[-40.0, -20.0, 50.0], [30.0, 10.0, -10.0], [0.0, -60.0, 20.0]])
    lines = ["study\tx\ty\tz\tspace"]
    for i, ((x, y, z), space) in enumerate(zip(tal, ["TAL", "talairach", "Tal"])):
        lines.append(f"s{i}\t{x}\t{y}\t{z}\t{space}")
    lines.append("mni\t10\t20\t30\tMNI")
    path = write(tmp_path, "coords.tsv", "\n".join(lines) + "\n")
    table = read_coordinates(path)

    expected = tal2mni(tal.copy())
    got = table[["x", "y", "z"]].to_numpy()[:3]
    np.testing.assert_allclose(got, expected)
    assert np.abs(got - tal).max() > 1.0  # the conversion did something
    np.testing.assert_array_equal(table.loc[3, ["x", "y", "z"]].to_numpy(float), [10, 20, 30])
    assert table["space"].tolist() == ["TAL", "TAL", "TAL", "MNI"]


def test_csv_bom_crlf_and_gzip(tmp_path):
    text = "\ufeffstudy,x,y,z\r\n\"Doe, 2001\",1,2,3\r\n"
    path = tmp_path / "coords.csv"
    path.write_bytes(text.encode("utf-8"))
    table = read_coordinates(path)
    assert table["study"].tolist() == ["Doe, 2001"]
    assert table["source_row"].tolist() == [2]

    gz = tmp_path / "coords.tsv.gz"
    gz.write_bytes(gzip.compress(b"study\tx\ty\tz\ns\t1\t2\t3\n"))
    assert read_coordinates(gz)[["x", "y", "z"]].to_numpy().tolist() == [[1, 2, 3]]


def test_trailing_tab_column_dropped(tmp_path):
    path = write(tmp_path, "coords.tsv", "study\tx\ty\tz\t\ns\t1\t2\t3\t\n")
    assert list(read_coordinates(path).columns) == list(OUTPUT_COLUMNS)


# Each case: file text, then the row and column the InputDataError must name.
BAD_TABLES = {
    "missing_column": ("study\tx\ty\tdepth\ns\t1\t2\t3\n", 1, "z"),
    "empty_x": ("study\tx\ty\tz\ns\t1\t2\t3\ns\t\t2\t3\n", 3, "x"),
    "text_y": ("study\tx\ty\tz\ns\t1\tabc\t3\n", 2, "y"),
    "decimal_comma": ("study\tx\ty\tz\ns\t1\t2\t3,5\n", 2, "z"),
    "nan_text": ("study\tx\ty\tz\ns\tnan\t2\t3\n", 2, "x"),
    "empty_study": ("study\tx\ty\tz\n\n \t1\t2\t3\n", 3, "study"),
    "bad_space": ("study\tx\ty\tz\tspace\ns\t1\t2\t3\tMNI\ns\t1\t2\t3\tcolin27\n", 3, "space"),
    "empty_space": ("study\tx\ty\tz\tspace\ns\t1\t2\t3\t\n", 2, "space"),
    "outside_brain": ("study\tx\ty\tz\ns\t1\t2\t3\ns\t-42\t-20\t560\n", 3, "z"),
    "only_header": ("study\tx\ty\tz\n", 1, None),
    "extra_field": ("study\tx\ty\tz\ns\t1\t2\t3\t4\n", 2, None),
    "comma_in_tsv": ("study,x,y,z\ns,1,2,3\n", 1, "study,x,y,z"),
    "space_separated": ("study x y z\ns 1 2 3\n", 1, "study x y z"),
    "duplicate_column": ("study\tx\ty\tz\tX\ns\t1\t2\t3\t4\n", None, "x"),
    "unnamed_values": ("study\tx\ty\tz\t\ns\t1\t2\t3\tfoo\n", 2, None),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_table(tmp_path, case):
    text, row, column = BAD_TABLES[case]
    path = write(tmp_path, f"{case}.tsv", text)
    with pytest.raises(InputDataError, match=location(path, row, column)) as info:
        read_coordinates(path)
    assert info.value.exit_code == 65
    assert "\n" not in str(info.value)


def test_bad_values_are_quoted(tmp_path):
    path = write(tmp_path, "c.tsv", "study\tx\ty\tz\tspace\ns\t1\t2\t3\tcolin27\n")
    with pytest.raises(InputDataError, match=r"colin27.*MNI.*TAL"):
        read_coordinates(path)
    path = write(tmp_path, "d.tsv", "study\tx\ty\tz\ns\t1\t2,5\t3\n")
    with pytest.raises(InputDataError, match=r"'2,5'.*dot"):
        read_coordinates(path)
    path = write(tmp_path, "g.tsv", "study\tx\ty\tz\ns\t1\t-inf\t3\n")
    with pytest.raises(InputDataError, match=r"'-inf' is not a number"):
        read_coordinates(path)
    path = write(tmp_path, "e.tsv", "study\tx\ty\tdepth\ns\t1\t2\t3\n")
    with pytest.raises(InputDataError, match=r"missing column\(s\) z; found .*depth"):
        read_coordinates(path)
    path = write(tmp_path, "f.tsv", "study\tx\ty\tz\ns\t1\t2\t-560\n")
    with pytest.raises(InputDataError, match=r"typo"):
        read_coordinates(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.tsv"
    with pytest.raises(MissingInputError, match=location(path)) as info:
        read_coordinates(path)
    assert info.value.exit_code == 66


def test_undecodable_file(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("study\tx\ty\tz\nG\u00f6teborg\t1\t2\t3\n".encode("latin-1"))
    # wrong content, not a failed read: bad data (issue 9.12)
    with pytest.raises(InputDataError, match=location(path, 2) + ".*UTF-8") as info:
        read_coordinates(path)
    assert info.value.exit_code == 65
    assert "teborg" not in info.value.message  # never echo the user's file


def test_unbalanced_quote_is_refused_not_merged(tmp_path):
    """Issue 9.5: '"Smith 2010' ... 'Lee" 2012' made one study of three rows."""
    path = write(tmp_path, "quote.tsv", 'study\tx\ty\tz\n"Smith 2010\t1\t2\t3\n'
                 'Mid 2011\t4\t5\t6\nLee" 2012\t7\t8\t9\n')
    with pytest.raises(InputDataError, match=location(path, 2) + ".*closed only on line 4"
                       ) as info:
        read_coordinates(path)
    assert info.value.exit_code == 65


def test_text_input_size_is_capped(tmp_path, monkeypatch):
    """Issue 9.9: --coordinates /dev/zero read until memory ran out."""
    from bids_cnm.io import coordinates

    monkeypatch.setattr(coordinates, "MAX_TEXT_BYTES", 1000)
    path = write(tmp_path, "big.tsv", "study\tx\ty\tz\n" + "A\t1\t2\t3\n" * 200)
    with pytest.raises(InputDataError, match="too large for a coordinate table") as info:
        read_coordinates(path)
    assert info.value.exit_code == 65
    if Path("/dev/zero").exists():
        with pytest.raises(InputDataError, match="/dev/zero: larger than"):
            read_coordinates("/dev/zero")


def test_folder_is_read_error(tmp_path):
    with pytest.raises(ReadError, match=re.escape(tmp_path.name)):
        read_coordinates(tmp_path)


def test_empty_file(tmp_path):
    path = write(tmp_path, "empty.tsv", "\n\n")
    with pytest.raises(InputDataError, match=location(path, 1)):
        read_coordinates(path)


# --------------------------------------------------------------------------- DataFrames


def test_validate_dataframe():
    frame = pd.DataFrame(
        {"STUDY": [2019, "b"], "x": [1, 2.5], "y": ["3", " 4 "], "z": [5, 6], "extra": [1, 2]}
    )
    table = validate_coordinates(frame, "my frame")
    assert table["study"].tolist() == ["2019", "b"]
    assert table["source_row"].tolist() == [2, 3]  # as in a TSV written with a header
    np.testing.assert_allclose(table[["x", "y", "z"]], [[1, 3, 5], [2.5, 4, 6]])
    assert table["extra"].tolist() == [1, 2]

    with pytest.raises(InputDataError, match=r"my frame.*missing column\(s\) z"):
        validate_coordinates(frame.drop(columns="z"), "my frame")
    with pytest.raises(InputDataError, match=r"my frame, row 3, column 'x'"):
        validate_coordinates(frame.assign(x=[1.0, np.nan]), "my frame")
    with pytest.raises(InputDataError, match=r"my frame, row 12, column 'y'"):
        validate_coordinates(frame.assign(y=["1", "?"]), "my frame", rows=[11, 12])
    with pytest.raises(InputDataError, match=r"my frame.*no coordinate rows"):
        validate_coordinates(frame.iloc[:0], "my frame")


def test_summarize(tmp_path):
    path = write(tmp_path, "coords.tsv", GOOD_TSV)
    summary = summarize(read_coordinates(path))
    assert list(summary.columns) == ["set", "study", "n_coordinates"]
    rows = {(s, st): n for s, st, n in summary.itertuples(index=False)}
    assert rows == {("disc", "2019"): 1, ("primary", "Smith 2020"): 1, ("repl", "Smith 2020"): 1}


# --------------------------------------------------------------------------- Sleuth


def sleuth(name):
    return os.path.join(NIMARE_DATA, name)


def sorted_xyz(frame, key):
    """x, y, z sorted by an id column then by coordinates (NiMARE's order is unstable)."""
    return frame.sort_values([key, "x", "y", "z"])[["x", "y", "z"]].to_numpy(float)


def test_sleuth_mni(nimare_reference):
    table = read_coordinates(sleuth("test_sleuth_file.txt"))
    reference = nimare_reference(sleuth("test_sleuth_file.txt"), "ale_2mm")

    assert len(table) == len(reference.coordinates) == 7
    # one study per experiment: the NiMARE experiment id
    assert sorted(table["study"].unique()) == sorted(reference.ids)
    assert table["study"].nunique() == 3
    assert {"study_id", "contrast_id", "sample_size"} <= set(table.columns)
    assert table.groupby("study")["sample_size"].first().to_dict() == {
        "StudyName-ExperimentName": 50,
        "StudyName2-ExperimentName": 46,
        next(i for i in reference.ids if i.startswith("StudyName3")): 20,
    }
    assert set(table["space"]) == {"MNI"}
    assert set(table["set"]) == {"primary"}
    # foci keep the file order within an experiment
    first = table[table["study"] == "StudyName-ExperimentName"]
    assert first[["x", "y", "z"]].to_numpy().tolist()[:2] == [[-16, -58, -22], [26, -64, -50]]
    np.testing.assert_allclose(
        sorted_xyz(table.rename(columns={"study": "sid"}), "sid"),
        sorted_xyz(reference.coordinates, "id"),
    )


def test_sleuth_talairach(nimare_reference):
    table = read_coordinates(sleuth("test_sleuth_file2.txt"))
    raw = np.array([[-18, -58, -24], [-18, -58, -24], [26, -64, -50], [12, -70, -42]], float)

    assert set(table["space"]) == {"TAL"}
    np.testing.assert_allclose(table[["x", "y", "z"]], tal2mni(raw.copy()))
    assert np.abs(table[["x", "y", "z"]].to_numpy() - raw).max() > 1.0
    # same numbers as NiMARE's own conversion into its default MNI target
    reference = nimare_reference(sleuth("test_sleuth_file2.txt"), "ale_2mm")
    np.testing.assert_allclose(
        sorted_xyz(table, "study"), sorted_xyz(reference.coordinates, "id")
    )


# NiMARE's deliberately malformed Sleuth files: line and column of the problem.
MALFORMED_SLEUTH = {
    "test_sleuth_file3.txt": (5, "z", "dog"),  # a coordinate is a word
    "test_sleuth_file4.txt": (5, None, "2 values"),  # a focus with x and y only
    "test_sleuth_file5.txt": (1, None, "Dog"),  # '// Reference = Dog'
}


@pytest.mark.parametrize("name", sorted(MALFORMED_SLEUTH))
def test_malformed_sleuth_from_nimare(tmp_path, name):
    row, column, detail = MALFORMED_SLEUTH[name]
    path = tmp_path / name
    shutil.copy(sleuth(name), path)
    with pytest.raises(InputDataError, match=location(path, row, column)) as info:
        read_coordinates(path)
    message = str(info.value)
    assert detail in message
    assert "Reference=MNI" in message  # says how a valid file looks
    assert "\n" not in message
    assert isinstance(info.value.__cause__, ValueError)  # NiMARE's error, wrapped


def test_sleuth_silent_merges_are_refused(tmp_path):
    # NiMARE keeps only the last of two experiments with the same name
    duplicate = write(
        tmp_path,
        "dup.txt",
        "// Reference=MNI\n// A, 2001: c\n// Subjects=10\n1 2 3\n\n"
        "// A, 2001: c\n// Subjects=12\n4 5 6\n",
    )
    match = location(duplicate, 6) + ".*already appears at row 2"
    with pytest.raises(InputDataError, match=match):
        read_coordinates(duplicate)
    assert len(convert_sleuth_to_dataset(str(duplicate), target=None).coordinates) == 1
    # NiMARE ignores foci written before the first experiment header
    orphan = write(
        tmp_path, "orphan.txt", "// Reference=MNI\n7 8 9\n// A, 2001: c\n// Subjects=10\n1 2 3\n"
    )
    with pytest.raises(InputDataError, match=location(orphan, 2) + ".*before the first"):
        read_coordinates(orphan)
    # an experiment without foci is merged into the next one by NiMARE
    empty = write(
        tmp_path,
        "empty_exp.txt",
        "// Reference=MNI\n// A, 2001: c\n// Subjects=10\n\n"
        "// B, 2002: d\n// Subjects=12\n4 5 6\n",
    )
    with pytest.raises(InputDataError, match=location(empty, 3) + ".*no coordinate"):
        read_coordinates(empty)
    # a trailing experiment without foci crashes NiMARE with an IndexError
    trailing = write(
        tmp_path, "trailing.txt", "// Reference=MNI\n// A, 2001: c\n// Subjects=10\n1 2 3\n"
        "// B, 2002: d\n// Subjects=12\n",
    )
    with pytest.raises(InputDataError, match=location(trailing, 6) + ".*no coordinate"):
        read_coordinates(trailing)


@pytest.mark.parametrize(
    "text, row, detail",
    [
        ("// Reference=mni\n// A: c\n// Subjects=9\n1 2 3\n", 1, "space line"),
        ("// Reference=MNI\n// A: c\n// subjects=9\n1 2 3\n", 3, "Subjects=N"),
        ("// Reference=MNI\n// A: c\n// Subjects=nine\n1 2 3\n", 3, "not an integer"),
    ],
)
def test_sleuth_other_mistakes(tmp_path, text, row, detail):
    path = write(tmp_path, "s.txt", text)
    with pytest.raises(InputDataError, match=location(path, row) + ".*" + re.escape(detail)):
        read_coordinates(path)


def test_sleuth_outside_brain(tmp_path):
    text = "// Reference=MNI\n// A, 2001: c\n// Subjects=9\n1 2 3\n1 2 300\n"
    path = write(tmp_path, "s.txt", text)
    with pytest.raises(InputDataError, match=location(path) + r".*focus 2, column 'z'.*typo"):
        read_coordinates(path)


# --------------------------------------------------------------------------- NiMARE JSON


def test_nimare_json(nimare_reference):
    path = os.path.join(NIMARE_DATA, "nidm_pain_dset.json")
    table = read_coordinates(path)
    reference = nimare_reference(path)  # NiMARE's own reading, in its default MNI target

    assert table["study"].nunique() == reference.coordinates["study_id"].nunique() == 21
    assert len(table) == len(reference.coordinates)
    assert {"id", "contrast_id"} <= set(table.columns)
    assert set(table["space"]) == {"MNI"}
    assert table["source_row"].tolist() == list(range(1, len(table) + 1))
    # foci in file order (NiMARE's Dataset sorts them by id with an unstable sort)
    with open(path) as stream:
        coords = json.load(stream)["pain_01.nidm"]["contrasts"]["1"]["coords"]
    first = table[table["study"] == "pain_01.nidm"]
    assert first[["x", "y", "z"]].to_numpy().tolist() == np.c_[
        coords["x"], coords["y"], coords["z"]
    ].tolist()
    np.testing.assert_allclose(sorted_xyz(table, "id"), sorted_xyz(reference.coordinates, "id"))


def test_nimare_json_talairach_matches_nimare(nimare_reference):
    path = os.path.join(NIMARE_DATA, "neurosynth_dset.json")
    table = read_coordinates(path)
    reference = nimare_reference(path)

    assert set(table["space"]) == {"MNI", "TAL"}  # the original spaces are kept
    assert "z_stat" in table.columns
    np.testing.assert_allclose(sorted_xyz(table, "id"), sorted_xyz(reference.coordinates, "id"))


def nimare_json(tmp_path, data, name="d.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=1))
    return path


def test_bad_nimare_json(tmp_path):
    syntax = write(tmp_path, "syntax.json", '{\n "a": {\n  "contrasts": {,\n}\n}\n')
    with pytest.raises(InputDataError, match=location(syntax, 3) + ".*invalid JSON"):
        read_coordinates(syntax)

    shape = nimare_json(tmp_path, {"a": {"coords": {}}}, "shape.json")
    with pytest.raises(InputDataError, match=location(shape) + ".*contrasts") as info:
        read_coordinates(shape)
    assert info.value.__cause__ is not None

    coords = {"space": "colin27", "x": [1], "y": [2], "z": [3]}
    space = nimare_json(tmp_path, {"a": {"contrasts": {"1": {"coords": coords}}}}, "space.json")
    with pytest.raises(InputDataError, match=location(space) + r".*'a', focus 1, column 'space'"):
        read_coordinates(space)

    none = nimare_json(tmp_path, {"a": {"contrasts": {"1": {"metadata": {}}}}}, "none.json")
    with pytest.raises(InputDataError, match=location(none) + ".*no coordinates"):
        read_coordinates(none)


def test_coordinate_columns_constant():
    assert COORDINATE_COLUMNS == ("study", "x", "y", "z")
