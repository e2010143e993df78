"""Run a module with every function call counted — ``benchmarks/scale.py --calls`` starts members this way.

    python benchmarks/tools/callcount.py tracecanary.daemon.cli.main run suite.yaml ...

A profile hook (``sys.setprofile``, on every thread) counts Python calls (each start or resumption of a
Python frame, coroutines included) and calls of C functions. On SIGUSR1 the process appends
``<python calls> <C calls>`` to the file named by ``TC_CALLS_OUT``. Two such lines around a window,
divided by the runs in it, give the work per run — a figure that, unlike CPU seconds, does not depend on
what else the machine runs (caches, scheduling). The hook slows the process down about twofold.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
from types import FrameType
from typing import Any

_calls = [0, 0]


def _count(frame: FrameType, event: str, arg: Any) -> None:
    if event == "call":
        _calls[0] += 1
    elif event == "c_call":
        _calls[1] += 1


def _dump(signum: int, frame: FrameType | None) -> None:
    python, c = _calls  # read first: the write below is counted too, but after these values
    with open(os.environ["TC_CALLS_OUT"], "a") as out:
        out.write(f"{python} {c}\n")


def main() -> None:
    signal.signal(signal.SIGUSR1, _dump)
    module, sys.argv = sys.argv[1], sys.argv[1:]
    threading.setprofile(_count)
    sys.setprofile(_count)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
