"""Strict --label-names (medseg.metrics.params.parse_label_names): typos are refused, not read as names."""

from __future__ import annotations

import json

import pytest

from medseg.errors import ConfigError
from medseg.metrics.params import parse_label_names


def test_well_formed_names():
    assert parse_label_names("1=anterior,2=posterior", None) == {1: "anterior", 2: "posterior"}
    assert parse_label_names("1=left lobe; 2=right lobe", None) == {1: "left lobe", 2: "right lobe"}
    assert parse_label_names("a,b", [3, 4]) == {3: "a", 4: "b"}
    assert parse_label_names({"1": "liver"}, None) == {1: "liver"}


@pytest.mark.parametrize("bad, needle", [
    ("1=anterior 2=posterior", "separate the pairs with commas: 1=anterior,2=posterior"),
    ("1=anterior,1=posterior", "label 1 is named twice"),
    ("1=a,2=a", "labels 1 and 2 are both named 'a'"),
    ("1=", "label 1 has an empty name"),
    ("1=a,posterior", "'posterior' has no number"),
    ("x=a", "should look like 1=liver"),
    ({1: ""}, "empty name"),
    ("-1=a", "must be >= 0"),
])
def test_malformed_names_are_refused(bad, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        parse_label_names(bad, None)


def test_names_from_a_dataset_json_or_a_text_file(tmp_path):
    msd = tmp_path / "dataset.json"
    msd.write_text(json.dumps({"labels": {"0": "background", "1": "anterior", "2": "posterior"}}))
    assert parse_label_names(str(msd), None) == {1: "anterior", 2: "posterior"}
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    assert parse_label_names(str(v2), None) == {1: "liver"}
    txt = tmp_path / "names.txt"
    txt.write_text("# my labels\n1=anterior\n2=posterior  # the tail\n")
    assert parse_label_names(str(txt), None) == {1: "anterior", 2: "posterior"}
    txt.write_text("1=anterior 2=posterior\n")
    with pytest.raises(ConfigError, match="commas"):
        parse_label_names(str(txt), None)
    (tmp_path / "nolabels.json").write_text("{}")
    with pytest.raises(ConfigError, match="no 'labels'"):
        parse_label_names(str(tmp_path / "nolabels.json"), None)
