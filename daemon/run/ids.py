"""Run ids: minted by whoever must know a run's id before it starts (the scheduler, ``check``)."""

from __future__ import annotations

import time
import uuid


def new_run_id() -> str:
    """Time-ordered, unique run id (sortable by creation)."""
    return f"{time.time_ns() // 1_000_000:012x}{uuid.uuid4().hex[:12]}"
