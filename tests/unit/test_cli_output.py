import json

import pytest
import yaml

from broker.cli.output import Output, emit, emit_one

ROWS = [{"name": "a", "leases": 2, "keys": ["k1", "k2"], "ok": True, "server": None}]


def test_json_and_yaml_carry_the_same_fields(capsys: pytest.CaptureFixture[str]) -> None:
    emit(ROWS, Output.JSON)
    as_json = json.loads(capsys.readouterr().out)
    emit(ROWS, Output.YAML)
    as_yaml = yaml.safe_load(capsys.readouterr().out)
    assert as_json == as_yaml == ROWS


def test_table_has_a_header_and_readable_cells(capsys: pytest.CaptureFixture[str]) -> None:
    emit(ROWS, Output.TABLE, columns=("name", "leases", "keys", "ok", "server"))
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["NAME", "LEASES", "KEYS", "OK", "SERVER"]
    assert row.split() == ["a", "2", "k1,k2", "yes", "-"]


def test_an_empty_table_says_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    emit([], Output.TABLE, empty="no roles yet; add some")
    assert capsys.readouterr().out == "no roles yet; add some\n"
    emit([], Output.JSON)
    assert json.loads(capsys.readouterr().out) == []


def test_one_record_as_key_value_lines(capsys: pytest.CaptureFixture[str]) -> None:
    emit_one({"name": "a", "leases": 1}, Output.TABLE)
    assert capsys.readouterr().out.splitlines() == ["name:   a", "leases: 1"]
