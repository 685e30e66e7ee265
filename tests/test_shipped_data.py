"""The data shipped in the package: rebuilt exactly from the full sets, read by the same readers
with `data.root = ""`, licensed, and covered by the package data patterns of setup.cfg."""

import configparser
import fnmatch
import os

import pytest
from conftest import ROOT, SHARED_DATA

from gptjax.config import base_config
from gptjax.data import preferences, sft as sft_data, shipped
from gptjax.errors import GptjaxError


def _files(top):
    return sorted(os.path.relpath(os.path.join(d, f), top)
                  for d, _, fs in os.walk(top) for f in fs)


def test_the_shipped_subsets_are_what_the_full_sets_give(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data (the full sets) is not beside this checkout")
    shipped.build(str(SHARED_DATA), str(tmp_path))
    built = [f for f in _files(tmp_path)]
    assert built == [f for f in _files(shipped.SETS) if f != "README.md"]
    for rel in built:
        with open(os.path.join(shipped.SETS, rel), "rb") as f:
            assert (tmp_path / rel).read_bytes() == f.read(), rel


def test_the_default_root_reads_every_named_set_from_the_package():
    assert base_config().data.root == ""
    sizes = {name: len(sft_data.read_source(name, "")) for name in sft_data.READERS}
    assert sizes == {"hh-rlhf": 2312, "topical-chat": 240, "kdconv": 90, "gsm8k": 1500,
                     "self-instruct": 175, "addition": 400}
    assert {n: len(preferences.read_source(n, "")) for n in preferences.READERS} == {
        "hh-rlhf": 2307, "finegrained-rlhf": 120}
    for folder in shipped.SUBSETS:  # each subset keeps its license and source note
        names = os.listdir(os.path.join(shipped.SETS, folder))
        assert "SOURCE.md" in names and ({"LICENSE", "DATALICENSE"} & set(names)), folder


def test_a_missing_root_names_the_key(tmp_path):
    with pytest.raises(GptjaxError, match="data.root"):
        sft_data.read_source("gsm8k", str(tmp_path))


def test_setup_cfg_ships_every_asset():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = [p.strip() for p in cfg["options.package_data"]["gptjax.data"].split(",")]
    assets = os.path.join(ROOT, "gptjax", "data")
    for rel in _files(os.path.join(assets, "assets")):
        path = os.path.join("assets", rel)
        assert any(fnmatch.fnmatch(path, p) and path.count("/") == p.count("/")
                   for p in patterns), path
