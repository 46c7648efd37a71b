"""One place for configuration: every DENSENN_* variable the package mentions is in
densenn.config's table, only densenn/config.py reads the environment for one, and the
documented table is the code's."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from densenn import config
from densenn.errors import DensennError

PACKAGE = Path(config.__file__).parent


def _sources():
    return [p for p in PACKAGE.rglob("*.py")]


def test_every_variable_mentioned_is_in_the_table():
    found = set()
    for path in _sources():
        found |= set(re.findall(r"DENSENN_[A-Z0-9_]+", path.read_text()))
    assert found <= set(config.VARIABLES), found - set(config.VARIABLES)


def test_only_the_config_module_reads_them():
    for path in _sources():
        if path.name == "config.py":
            continue
        text = path.read_text()
        assert not re.search(r"environ(\.get)?\s*[\[(]\s*[\"']DENSENN_", text), path


def test_the_documented_table_is_the_code_s():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert config.table() in doc


@pytest.mark.parametrize("name,raw,want", [
    ("DENSENN_NUMBA", "0", False), ("DENSENN_NUMBA", "yes", True), ("DENSENN_THREADS", "3", 3),
    ("DENSENN_BLAS", "MKL", "mkl"), ("DENSENN_CUBLAS_WORKSPACE_MB", "8.5", 8.5), ("DENSENN_ENGINE", "", "cpu"),
])
def test_values_parse_by_kind(monkeypatch, name, raw, want):
    monkeypatch.setenv(name, raw)
    assert config.setting(name) == want


@pytest.mark.parametrize("name,raw", [("DENSENN_NUMBA", "maybe"), ("DENSENN_THREADS", "0"),
                                      ("DENSENN_THREADS", "-2"), ("DENSENN_BLAS", "atlas"),
                                      ("DENSENN_CUBLAS_WORKSPACE_MB", "nan")])
def test_bad_values_name_the_variable(monkeypatch, name, raw):
    monkeypatch.setenv(name, raw)
    with pytest.raises(DensennError, match=rf"\${name} must"):
        config.setting(name)
