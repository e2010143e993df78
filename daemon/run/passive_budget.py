"""The passive judge's span budget: the spans it holds (pending and open traces) never exceed ``max_spans``.

Over it the oldest pending traces go first, then new entry traces are counted ``dropped`` instead of
judged. Pending traces older than their probe's ``timeout`` (plus ``settle``) are swept: their entry
span, had it started, would be past its deadline. Drops are logged on the first and then every
``LOG_EVERY`` (the metric counts each).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tracecanary.daemon.run.passive_state import ProbeState

log = logging.getLogger("tracecanary.passive")

LOG_EVERY = 1000
"""Drops for the span budget are logged on the first and then every this many (the metric counts each)."""


class SpanBudget:
    """The spans held across every passive probe, against ``max_spans``."""

    def __init__(self, max_spans: int) -> None:
        self.max_spans = max_spans
        self.held = 0
        self.dropped_pending = 0
        """Pending traces (no entry span yet) dropped for the span budget."""

    def make_room(self, states: Sequence[ProbeState]) -> bool:
        """Drop the oldest pending traces while over the span budget; False when still over it."""
        while self.held > self.max_spans:
            oldest = min((s for s in states if s.pending),
                         key=lambda s: next(iter(s.pending.values()))[0], default=None)
            if oldest is None:
                return False
            _, (_, spans) = oldest.pending.popitem(last=False)
            self.held -= len(spans)
            self.dropped_pending += 1
            if self.dropped_pending % LOG_EVERY == 1:
                log.warning("passive judge over its span budget: oldest traces still waiting for their entry span "
                            "dropped held_spans=%d max_spans=%d dropped_total=%d", self.held, self.max_spans,
                            self.dropped_pending)
        return True

    def drop_entry(self, state: ProbeState, key: bytes, spans: int) -> None:
        """An entry trace found no room: its ``spans`` are let go and it is counted ``dropped``, not judged."""
        self.held -= spans
        state.remember(key)
        state.dropped()
        if state.totals["dropped"] % LOG_EVERY == 1:
            log.warning("passive judge over its span budget: entry trace dropped probe=%s held_spans=%d "
                        "max_spans=%d dropped_total=%d", state.spec.id, self.held, self.max_spans,
                        state.totals["dropped"])

    def forget(self, state: ProbeState) -> None:
        """Let go of a probe's held spans (it left the config or changed)."""
        self.held -= sum(op.spans + len(op.fresh) for op in state.open.values())
        self.held -= sum(len(spans) for _, spans in state.pending.values())

    def sweep(self, states: Sequence[ProbeState], now: float) -> None:
        """Drop pending traces whose entry span, had it started, would be past its deadline."""
        for state in states:
            horizon = now - state.spec.timeout - state.expectation.settle
            pending = state.pending
            while pending:
                first_s, spans = next(iter(pending.values()))
                if first_s >= horizon:
                    break
                pending.popitem(last=False)
                self.held -= len(spans)
