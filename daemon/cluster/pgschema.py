"""PostgreSQL side of ``mode: standby``: the leader row, the members table and the write fence.

``cluster_leader`` has one row: the leader epoch (bumped on every takeover), the member holding it, the
writer identity of that term (``<member>.e<epoch>``) and the backend pid of its lock connection. ``cluster_members`` has one row per replica, refreshed by its
heartbeat. ``cluster_fence()`` is a BEFORE trigger on the tables the active role writes (runs, events,
kv): a connection that names a writer (libpq option ``-c tracecanary.member=<id>``, set on every
store connection in mode standby; an active replica opens its store anew for each term it wins, as
``<member>.e<epoch>``) may write only while that is the current term's writer *and* the lock
connection recorded for it still holds the advisory lock — so even a replica that wins again later
never lands a write of an earlier term. A deposed replica's late writes are
refused with SQLSTATE ``TCF01`` (never merged); connections without the option (mode single, tools)
are not fenced. The kv namespaces any replica may write (the store's proving writes, silences) are
exempt.

Unlike kafka mode's tables (store migration 4), this schema stays outside ``MIGRATIONS`` on purpose:
the fence function and its triggers are code that must match the running binary, so each election
session re-creates them (``CREATE OR REPLACE``, triggers dropped and re-made) — a fixed fence reaches an
existing database at the next start, which a frozen migration step would not do.
"""

from __future__ import annotations

LOCK_KEY = 0x74630001
"""The session advisory lock the active replica holds (bigint key; < 2**31: ``classid`` 0 in pg_locks)."""
DDL_LOCK_KEY = 0x74630002
"""A transaction lock serialising replicas that create the cluster schema at the same time."""
FENCED_SQLSTATE = "TCF01"
MEMBER_GUC = "tracecanary.member"
FENCED_TABLES = ("runs", "events", "kv")
EXEMPT_KV_NAMESPACES = ("tracecanary.store", "alerts.silences")
NOW_NS = "(extract(epoch from clock_timestamp()) * 1e9)::bigint"
"""The server's clock: every replica's heartbeat is judged by one clock."""

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cluster_leader (
    id INTEGER PRIMARY KEY CHECK (id = 1), epoch BIGINT NOT NULL, member TEXT, writer TEXT, holder_pid INTEGER,
    since_ns BIGINT NOT NULL
);
INSERT INTO cluster_leader (id, epoch, member, writer, holder_pid, since_ns) VALUES (1, 0, NULL, NULL, NULL, 0)
    ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS cluster_members (
    member TEXT PRIMARY KEY, role TEXT NOT NULL, epoch BIGINT, address TEXT, started_ns BIGINT NOT NULL,
    heartbeat_ns BIGINT NOT NULL
);
CREATE OR REPLACE FUNCTION cluster_fence() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    me TEXT := current_setting('{MEMBER_GUC}', true);
    ns TEXT;
    lead cluster_leader%ROWTYPE;
BEGIN
    IF me IS NOT NULL AND me <> '' THEN
        IF TG_TABLE_NAME = 'kv' THEN
            IF TG_OP = 'DELETE' THEN ns := OLD.namespace; ELSE ns := NEW.namespace; END IF;
        END IF;
        IF ns IS NULL OR ns NOT IN ({", ".join(f"'{ns}'" for ns in EXEMPT_KV_NAMESPACES)}) THEN
            SELECT * INTO lead FROM cluster_leader WHERE id = 1;
            IF lead.writer IS DISTINCT FROM me OR NOT EXISTS (
                    SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = lead.holder_pid AND granted
                    AND classid = 0 AND objid = {LOCK_KEY} AND objsubid = 1) THEN
                RAISE EXCEPTION USING ERRCODE = '{FENCED_SQLSTATE}', MESSAGE = format(
                    'fenced: member %s is not the active replica (leader epoch %s is held by %s); write to %s refused',
                    me, lead.epoch, COALESCE(lead.writer, 'nobody'), TG_TABLE_NAME);
            END IF;
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END $$;
"""


def fence_triggers(table: str) -> str:
    """(Re)create the fence trigger on ``table`` (when the store created it)."""
    return f"""
DO $$ BEGIN
    IF to_regclass('{table}') IS NOT NULL THEN
        DROP TRIGGER IF EXISTS cluster_fence ON {table};
        CREATE TRIGGER cluster_fence BEFORE INSERT OR UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION cluster_fence();
    END IF;
END $$;
"""


TAKEOVER = f"""
UPDATE cluster_leader SET epoch = epoch + 1, member = %(member)s,
    writer = %(member)s || '.e' || (epoch + 1)::text, holder_pid = pg_backend_pid(), since_ns = {NOW_NS}
WHERE id = 1 RETURNING epoch, writer
"""
PREVIOUS_LEADER = "SELECT member, epoch FROM cluster_leader WHERE id = 1 FOR UPDATE"
HOLDS_LOCK = (f"SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
              f"AND granted AND classid = 0 AND objid = {LOCK_KEY} AND objsubid = 1)")
HEARTBEAT = f"""
INSERT INTO cluster_members (member, role, epoch, address, started_ns, heartbeat_ns)
VALUES (%(member)s, %(role)s, %(epoch)s, %(address)s, %(started_ns)s, {NOW_NS})
ON CONFLICT (member) DO UPDATE SET role = excluded.role, epoch = excluded.epoch, address = excluded.address,
    heartbeat_ns = excluded.heartbeat_ns
"""
MEMBERS = (f"SELECT member, role, epoch, address, started_ns, heartbeat_ns, "
           f"heartbeat_ns > {NOW_NS} - %(ttl_ns)s AS alive FROM cluster_members ORDER BY started_ns, member")
PRUNE_MEMBERS = f"DELETE FROM cluster_members WHERE heartbeat_ns < {NOW_NS} - %(keep_ns)s"
LEAVE = "UPDATE cluster_members SET role = 'left', epoch = NULL WHERE member = %(member)s"
