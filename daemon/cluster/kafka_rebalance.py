"""What a kafka-mode daemon does when probes move between members (``kafka_cluster.py``).

At an ownership change — a rebalance, or a lease that lapsed under a member cut from the broker — the
member schedules exactly the probes it now owns, aborts its runs of the probes it lost (recorded
``aborted``, reason ``rebalance``), and for the probes it gained records what the previous owner left
``aborted`` too and runs those probes again at once, as soon as their lease is its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.abc

from tracecanary.daemon.cluster.kafka_cluster import KafkaClusterMembership, MovesHandler
from tracecanary.daemon.run.runner import Runner
from tracecanary.daemon.run.scheduler import RunRefused, Scheduler

log = logging.getLogger("tracecanary.cluster.kafka")


async def _run_when_owned(membership: KafkaClusterMembership, runner: Runner, scheduler: Scheduler,
                          probe_id: str, left: list[str], timeout_s: float) -> None:
    with anyio.move_on_after(timeout_s):
        while not membership.owns(probe_id):  # the lease is claimed by a coming lease round
            await membership.wait_lease_round()
        runs = [r for r in [await runner.deps.store.get_run(run_id) for run_id in left] if r is not None]
        await membership.publish_aborted(runs)  # the previous owner's last runs reach results_topic too
        try:
            scheduler.run_now(probe_id)
        except (RunRefused, KeyError) as e:
            log.info("re-run after rebalance refused probe=%s reason=%s", probe_id, e)


def rebalance_handler(membership: KafkaClusterMembership, runner: Runner, scheduler: Scheduler,
                      tg: anyio.abc.TaskGroup, *, reschedule: Callable[[], None]) -> MovesHandler:
    """What the daemon does at an ownership change: schedule exactly the probes now owned
    (``reschedule``); abort its runs of probes that moved away (recorded ``aborted``, reason
    ``rebalance``); for probes it gained, record what the previous owner left running ``aborted`` too and
    run those probes again at once (as soon as their lease is ours)."""
    async def handle(lost: set[str], gained: set[str]) -> None:
        reschedule()
        if lost:
            aborted = runner.abort(lost, "rebalance")
            if aborted:
                log.warning("runs aborted: their probes moved member=%s runs=%d", membership.member_id, aborted)
        left = await membership.abort_left_runs(gained) if gained else {}
        for probe_id, run_ids in sorted(left.items()):
            tg.start_soon(_run_when_owned, membership, runner, scheduler, probe_id, run_ids,
                          membership.timing.session_timeout_s * 3)
    return handle
