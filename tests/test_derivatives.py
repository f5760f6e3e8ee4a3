"""Tests of bids_cnm.io.derivatives: sources named as BIDS URIs (remembered per path)."""

from __future__ import annotations

from bids_cnm.io.derivatives import DerivativesWriter


def test_uri_of_relative_paths_follows_the_working_folder(tmp_path, monkeypatch):
    connectome, coordinates = tmp_path / "connectome", tmp_path / "coords"
    for folder in (connectome / "sub-01", coordinates / "a", coordinates / "b"):
        folder.mkdir(parents=True)
    writer = DerivativesWriter(tmp_path / "out", connectome, {}, "MNI152NLin2009cAsym",
                               links={"coordinates": coordinates})
    table = coordinates / "a" / "table.tsv"
    # the same answer every time a sidecar asks (the second one comes from memory)
    assert [writer.uri(table) for _ in range(2)] == ["bids:coordinates:a/table.tsv"] * 2
    assert writer.uri(connectome / "sub-01" / "x.nii.gz") == "bids:connectome:sub-01/x.nii.gz"
    assert writer.uri(tmp_path / "elsewhere.tsv") == "elsewhere.tsv"
    assert writer.uri("bids:plan:rois.tsv") == "bids:plan:rois.tsv"
    # a relative path names another file once the working folder changes
    monkeypatch.chdir(coordinates / "a")
    assert writer.uri("t.tsv") == "bids:coordinates:a/t.tsv"
    monkeypatch.chdir(coordinates / "b")
    assert writer.uri("t.tsv") == "bids:coordinates:b/t.tsv"
