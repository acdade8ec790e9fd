"""The one YAML reader behind the settings' and the roles file's `file:line` messages."""

from __future__ import annotations

import pytest

from broker.models.yaml_source import YamlInvalid, read_yaml

TEXT = """\
vault:
  address: http://127.0.0.1:8200
clusters:
  - name: a
    audience: a-aud
  - name: b
"""


@pytest.mark.parametrize(
    ("loc", "line"),
    [
        (["vault"], 1),
        (["vault", "address"], 2),
        (["vault", "token"], 1),  # not written: the deepest part that is
        (["clusters", 0, "audience"], 5),
        (["clusters", "1", "audience"], 6),  # the entry's first line
        (["clusters", 7, "name"], 3),  # no such entry: the list's key
        (["nowhere"], None),
    ],
)
def test_a_location_is_the_line_of_its_deepest_written_part(
    loc: list[str | int], line: int | None
) -> None:
    assert read_yaml(TEXT).line_of(loc) == line


def test_the_data_is_the_safe_loaders() -> None:
    assert read_yaml(TEXT).data["clusters"][1] == {"name": "b"}


def test_text_that_is_not_yaml_says_where_the_parser_gave_up() -> None:
    with pytest.raises(YamlInvalid) as failed:
        read_yaml("a: 1\nb: [unclosed\nc: 2\n")
    assert failed.value.line is not None
    assert failed.value.line >= 2
    assert failed.value.problem
