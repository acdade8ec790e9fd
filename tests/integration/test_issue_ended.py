"""Issue never replays a credential whose Vault lease has run out. A lease nobody renewed
(its pod never held a Watch, or the broker was away past its end) is still active in the
store; the next Issue for that pod's credential hands it to the revoker and asks Vault for
a new one, instead of handing out a dead login.

On the bed, with the broker's clock (ManualClock) moved past the lease's end: the second
Issue gives a new lease whose login works, the old one is revoked at Vault and its login
refused, and the audit trail says why (`lease.revoking`, reason EXPIRED).
"""

from __future__ import annotations

import asyncio
import json

import psycopg
import pytest

from broker.audit import read_log
from broker.store import LeaseState
from tests.bed.kube import KubeCluster
from tests.bed.postgres import PostgresServer
from tests.scene.broker import Broker, issue, log_in
from tests.scene.clocks import ManualClock
from tests.scene.workloads import mint

pytestmark = pytest.mark.bed
UNTIL = 60.0  # bound of the poll for the revoker's pass; never asserted


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def test_an_ended_lease_is_retired_and_issued_anew_not_replayed(
    broker: Broker,
    clock: ManualClock,
    kube_clusters: dict[str, KubeCluster],
    postgres: PostgresServer,
) -> None:
    token = mint(kube_clusters["a"], pod_prefix="unwatched", seconds=3600)
    first = await issue(broker, token)
    again = await issue(broker, token)
    assert again.lease.id == first.lease.id  # alive: replayed, Vault not asked

    store = broker.store()
    try:
        ends = store.leases.get(first.lease.id).expires_at
        assert ends is not None
        clock.freeze()
        clock.advance((ends - clock()).total_seconds() + 1)  # nobody renewed it: it ended

        fresh = await issue(broker, token)
        assert fresh.lease.id != first.lease.id
        assert fresh.credential.values["password"] != first.credential.values["password"]
        log_in(postgres, fresh.credential.values)

        deadline = asyncio.get_running_loop().time() + UNTIL
        while store.leases.get(first.lease.id).state is not LeaseState.REVOKED:
            assert asyncio.get_running_loop().time() < deadline, "the ended lease never revoked"
            await asyncio.sleep(0.1)
        assert store.leases.get(fresh.lease.id).state is LeaseState.ACTIVE
    finally:
        store.close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        log_in(postgres, first.credential.values)

    records = [json.loads(line) for line in read_log(broker.settings.audit.log)]
    retired = [
        r
        for r in records
        if r.get("lease_id") == first.lease.id and r["action"] == "lease.revoking"
    ]
    assert [r.get("reason") for r in retired] == ["EXPIRED"]
