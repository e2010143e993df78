"""The Membership for a daemon's ``daemon.cluster`` settings and store URL."""

from __future__ import annotations

from collections.abc import Callable

from tracecanary.daemon.cluster.fence import member_url
from tracecanary.daemon.cluster.membership import Membership, SingleMembership
from tracecanary.daemon.cluster.settings import ClusterSettings, is_postgres_url
from tracecanary.daemon.cluster.timing import StandbyTiming
from tracecanary.errors import StartupError


def membership_for(cluster: ClusterSettings, store_url: str, *, timing: StandbyTiming = StandbyTiming(),
                   on_deposed: Callable[[str], None] | None = None) -> tuple[Membership, str]:
    """The membership, and the store URL the engine opens (in mode standby it names the member, so its
    writes are fenced). A store given with ``--store`` that the mode cannot use is a startup error."""
    if cluster.mode == "single":
        return SingleMembership(), store_url
    if not is_postgres_url(store_url):
        raise StartupError(f"daemon.cluster mode {cluster.mode} needs a postgresql:// store, not {store_url}")
    if cluster.mode == "kafka":
        raise StartupError("daemon.cluster mode kafka is not built yet (use single or standby)")
    from tracecanary.daemon.cluster.standby import StandbyMembership  # psycopg: imported when it is used

    standby = StandbyMembership(store_url, timing=timing, on_deposed=on_deposed)
    return standby, member_url(store_url, standby.member_id)
