"""What a kafka-mode daemon does when probes move between members (``kafka_cluster.py``).

At an ownership change — a rebalance, or a lease that lapsed under a member cut from the broker — the
member schedules exactly the probes it now owns, aborts its runs of the probes it lost (recorded
``aborted``, reason ``rebalance``), and for the probes it gained records what the previous owner left
``aborted`` too and runs those probes again at once, as soon as their lease is its own.

A slot can also fall while a probe changes hands with no run in flight: the old owner dropped it, the new
owner's lease was not claimed yet (it waits for the old owner to release it, or for a cut-off owner's
lease to lapse). So a gained ``every`` probe whose latest slot fell during the handover and nobody ran
is run at once too, once the lease is ours (cron probes wait for their next time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import anyio
import anyio.abc

from tracecanary.daemon.cluster.kafka_cluster import KafkaClusterMembership, MovesHandler
from tracecanary.daemon.run.runner import Runner
from tracecanary.daemon.run.scheduler import RunRefused, Scheduler, every_next_wall
from tracecanary.probes.base import ProbeSpec

log = logging.getLogger("tracecanary.cluster.kafka")


async def _run_when_owned(membership: KafkaClusterMembership, runner: Runner, scheduler: Scheduler,
                          probe_id: str, left: list[str], timeout_s: float) -> None:
    with anyio.move_on_after(timeout_s):
        while not membership.owns(probe_id):  # the lease is claimed by a coming lease round
            await membership.wait_lease_round()
        runs = [r for r in [await runner.deps.store.get_run(run_id) for run_id in left] if r is not None]
        await membership.publish_aborted(runs)  # the previous owner's last runs reach results_topic too
        latest = (await runner.deps.store.latest_runs([probe_id])).get(probe_id)
        if latest is not None and latest.run_id not in left:
            return  # a run started since (its slot came while the lease was being claimed): nothing to redo
        try:
            scheduler.run_now(probe_id)
        except (RunRefused, KeyError) as e:
            log.info("re-run after rebalance refused probe=%s reason=%s", probe_id, e)


async def _catch_up(membership: KafkaClusterMembership, runner: Runner, scheduler: Scheduler, probe: ProbeSpec,
                    since_s: float, timeout_s: float) -> None:
    """Run a gained probe at once when its latest slot fell after ``since_s`` (the handover: the previous
    owner's leases may have lapsed up to a session timeout before) and passed without a run on any member."""
    if probe.every is None:
        return
    with anyio.move_on_after(timeout_s):
        while not membership.owns(probe.id):
            await membership.wait_lease_round()
        last_slot_s = every_next_wall(probe.id, probe.every, probe.jitter, time.time()) - probe.every
        if last_slot_s < since_s:
            return
        latest = (await runner.deps.store.latest_runs([probe.id])).get(probe.id)
        if latest is not None and latest.started_ns >= (last_slot_s - min(1.0, probe.every / 4)) * 1e9:
            return  # that slot ran (here or on the previous owner)
        try:
            scheduler.run_now(probe.id)
            log.info("slot missed while the probe moved: run now probe=%s slot=%.3f", probe.id, last_slot_s)
        except (RunRefused, KeyError) as e:  # a run is going already
            log.info("catch-up run refused probe=%s reason=%s", probe.id, e)


def rebalance_handler(membership: KafkaClusterMembership, runner: Runner, scheduler: Scheduler,
                      tg: anyio.abc.TaskGroup, *, reschedule: Callable[[], None],
                      probes: Callable[[], Sequence[ProbeSpec]] = tuple) -> MovesHandler:
    """What the daemon does at an ownership change: schedule exactly the probes now owned
    (``reschedule``); abort its runs of probes that moved away (recorded ``aborted``, reason
    ``rebalance``); for probes it gained, record what the previous owner left running ``aborted`` too and
    run those probes again at once (as soon as their lease is ours), and run the other gained ones whose
    latest slot passed without a run (``probes``: the loaded probes)."""
    async def handle(lost: set[str], gained: set[str]) -> None:
        reschedule()
        if lost:
            aborted = runner.abort(lost, "rebalance")
            if aborted:
                log.warning("runs aborted: their probes moved member=%s runs=%d", membership.member_id, aborted)
        left = await membership.abort_left_runs(gained) if gained else {}
        timeout_s = membership.timing.session_timeout_s * 3
        since_s = time.time() - membership.timing.session_timeout_s * 2
        for probe_id, run_ids in sorted(left.items()):
            tg.start_soon(_run_when_owned, membership, runner, scheduler, probe_id, run_ids, timeout_s)
        for probe in probes():
            if probe.id in gained and probe.id not in left:
                tg.start_soon(_catch_up, membership, runner, scheduler, probe, since_s, timeout_s)
    return handle
