"""`keyferry policy check` and the broker's start-up warning (issue 18): permits that let
workloads of any cluster in are listed; the example policies name their clusters."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from broker.policy import PolicyEngine
from broker.policy.lint import open_permits

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples" / "policies.cedar"
E2E = Path(__file__).parents[1] / "e2e" / "policies.cedar"


def test_the_example_policies_constrain_every_workload_permit_by_cluster() -> None:
    assert open_permits(EXAMPLES.read_text()) == []
    assert open_permits(EXAMPLES.read_text() + E2E.read_text()) == []


@pytest.mark.parametrize(
    ("policy", "actions"),
    [
        ("permit (principal, action, resource);", ()),
        ('permit (principal is Workload, action == Action::"issue", resource);', ("issue",)),
        (
            'permit (principal is Workload, action in [Action::"watch", Action::"audit"], '
            'resource) when { principal.namespace == "orders" };',
            ("watch",),
        ),
        (  # the resource's cluster is not the workload's
            'permit (principal is Workload, action == Action::"issue", resource is Role) '
            'when { resource.backend == "database" };',
            ("issue",),
        ),
    ],
)
def test_a_workload_permit_that_never_reads_the_cluster_is_reported(
    policy: str, actions: tuple[str, ...]
) -> None:
    [found] = open_permits(f'@id("p")\n{policy}')
    assert (found.policy, found.actions) == ("p", actions)
    assert "principal.cluster" in found.describe()


@pytest.mark.parametrize(
    "policy",
    [
        "permit (principal is Workload, action, resource) "
        'when { principal.cluster == Cluster::"a" };',
        'permit (principal in Group::"security", action, resource);',
        'permit (principal, action == Action::"rotate", resource);',
        "forbid (principal, action, resource);",
    ],
)
def test_constrained_operator_only_and_forbid_policies_are_not(policy: str) -> None:
    assert open_permits(policy) == []


def test_the_command_exits_1_listing_open_permits_and_0_when_there_are_none(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["policy", "check", str(EXAMPLES)]).exit_code == 0
    loose = tmp_path / "loose.cedar"
    loose.write_text('@id("anyone")\npermit (principal, action, resource);')
    result = runner.invoke(app, ["policy", "check", str(loose), "--output", "json"])
    assert result.exit_code == 1
    assert '"policy": "anyone"' in result.output
    broken = tmp_path / "broken.cedar"
    broken.write_text("permit (principal, action, resource")
    assert runner.invoke(app, ["policy", "check", str(broken)]).exit_code == 2
    assert PolicyEngine.from_files([EXAMPLES]).open_permits() == []
