"""The console's pure parts: the lease selector read from a form (bounded, `all` only when
asked or, for reading, when nothing is named), and the activity chart's SVG (escaped, one
line per series, totals in the legend)."""

from __future__ import annotations

import pytest

from broker.console.chart import Minute, activity_svg
from broker.console.pages.common import MAX_VALUES, FieldInvalid, describe, selector_of


def test_a_form_becomes_the_selector_of_keyferry_rotate() -> None:
    selector = selector_of({"cluster": "a, b", "namespace": " orders "}, empty_is_all=False)
    assert list(selector.clusters) == ["a", "b"]
    assert list(selector.namespaces) == ["orders"]
    assert not selector.all
    assert describe(selector) == "cluster a, b; namespace orders"
    assert not selector_of({}, empty_is_all=False).all  # the broker refuses it: say `all`
    assert selector_of({}, empty_is_all=True).all
    assert selector_of({"all": "on"}, empty_is_all=False).all


@pytest.mark.parametrize(
    "fields",
    [{"pod": " ".join(f"p{i}" for i in range(MAX_VALUES + 1))}, {"role": "r" * 254}],
)
def test_a_form_beyond_the_bounds_is_refused_naming_the_field(fields: dict[str, str]) -> None:
    with pytest.raises(FieldInvalid) as refused:
        selector_of(fields, empty_is_all=True)
    assert str(refused.value).startswith(next(iter(fields)))


def test_the_chart_draws_each_series_and_escapes_its_labels() -> None:
    minutes = [Minute("<10:00>", 3, 1, 0, 2), Minute("10:01", 1, 0, 4, 0)]
    svg = str(activity_svg(minutes))
    assert svg.count("<polyline") == 4
    assert "issued: 4" in svg
    assert "revoked: 4" in svg
    assert "refused: 2" in svg
    assert "&lt;10:00&gt;" in svg
    assert "<10:00>" not in svg
    assert "No activity" in str(activity_svg([]))
