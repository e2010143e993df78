"""tracecanary.daemon.cluster: membership and ownership — single, standby (a PostgreSQL advisory lock),
kafka (a consumer group). ``settings.py`` holds ``daemon.cluster``; ``membership.py`` the role seam the
daemon consumes; ``standby.py`` the election; ``pgschema.py`` and ``fence.py`` the leader epoch and the
write fence."""
