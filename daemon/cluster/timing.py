"""The durations of ``mode: standby``'s election (no psycopg import: the engine names them in every mode)."""

from __future__ import annotations

from dataclasses import dataclass

from tracecanary.daemon.cluster.fence import with_options


@dataclass(frozen=True)
class StandbyTiming:
    """The election's durations (the defaults are the documented behaviour; tests shorten them)."""

    heartbeat_s: float = 1.0
    """How often the lock connection is asked (hold or take the lock, refresh the member row)."""
    lost_after_s: float = 3.0
    """An active replica with no answer for this long stops acting and rejoins as standby."""
    server_release_s: float = 6.0
    """The server ends a lock session silent for this long (``idle_session_timeout``), freeing the lock."""
    connect_timeout_s: float = 5.0
    retry_s: float = 1.0
    """Wait before reconnecting after the connection failed."""

    def conninfo(self, url: str, member_id: str) -> str:
        """The lock connection's conninfo: ``url`` plus keepalives, timeouts and the server settings."""
        ms = int(self.server_release_s * 1000)
        idle_s = max(1, int(self.server_release_s / 3))
        server = with_options(url, f"idle_session_timeout={ms}", f"tcp_user_timeout={ms}",
                              f"tcp_keepalives_idle={idle_s}", "tcp_keepalives_interval=1",
                              "tcp_keepalives_count=2")
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            server, keepalives=1, keepalives_idle=idle_s, keepalives_interval=1, keepalives_count=2,
            tcp_user_timeout=ms, connect_timeout=max(1, int(self.connect_timeout_s)),
            application_name=f"tracecanary lock {member_id}"[:63])
