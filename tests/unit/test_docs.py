"""The hand-written reference pages agree with the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

from broker.server.metrics import BrokerMetrics
from injector.contract import FileFormat, Mode, Signal
from injector.webhook import annotations as contract

DOCS = Path(__file__).parents[2] / "docs"
ANNOTATIONS = (DOCS / "reference" / "annotations.md").read_text()
OPERATIONS = (DOCS / "operations.md").read_text()


def test_every_annotation_key_is_documented() -> None:
    for key in contract.KEYS:
        assert f"| `{key}` |" in ANNOTATIONS
    for prefix in contract.PREFIXES:
        assert f"| `{prefix}<name>` |" in ANNOTATIONS


def test_the_page_documents_no_annotation_the_webhook_refuses() -> None:
    table = [line for line in ANNOTATIONS.splitlines() if line.startswith("| `keyferry.io/")]
    keys = {re.match(r"\| `([^`]+)`", line).group(1) for line in table}  # type: ignore[union-attr]
    known = set(contract.KEYS) | {f"{p}<name>" for p in contract.PREFIXES}
    assert keys == known


def test_values_and_limits_match_the_parser() -> None:
    rows = {line.split("|")[1].strip(): line for line in ANNOTATIONS.splitlines() if "|" in line}
    formats = rows[f"`{contract.FORMAT_PREFIX}<name>`"]
    assert set(re.findall(r"`([a-z-]+)`", formats.split("|")[2])) == {f.value for f in FileFormat}
    assert {s.value for s in Signal} <= set(re.findall(r"`(SIG[A-Z0-9]+)`", ANNOTATIONS))
    for mode in Mode:
        assert f"`{mode.value}`" in rows[f"`{contract.MODE}`"]
    assert f"at most {contract.MAX_CREDENTIALS} per pod" in ANNOTATIONS
    assert f"at most {contract.MAX_VALUE_LENGTH} characters" in ANNOTATIONS


def test_the_metrics_table_is_the_brokers_metrics() -> None:
    names = set()
    for family in BrokerMetrics(lambda: 0.0).registry.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    table = {
        re.match(r"\| `([a-z_]+)`", line).group(1)  # type: ignore[union-attr]
        for line in OPERATIONS.splitlines()
        if line.startswith("| `keyferry_")
    }
    assert table == names
    for used in set(re.findall(r"\b(keyferry_[a-z_]+?)(?:_bucket)?\b", OPERATIONS)):
        assert used in names, f"operations.md uses {used}, which the broker does not export"
