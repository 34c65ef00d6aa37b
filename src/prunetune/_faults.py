"""Named kill points for the crash tests: ``PRUNETUNE_FAULT=<point>[:<n>]`` kills the process.

At the ``n``-th time (default 1) this process reaches the named point it sends itself
SIGKILL, the same as ``kill -9`` from outside, but at a place the test chooses instead of
whenever a timer fires. Unset (always, outside the crash tests) a point costs one dict lookup.

Points: ``study-created`` (a new study, before its settings are stored), ``tier-a`` and
``tier-b`` (a trial after that proxy has run, before anything is recorded), ``pareto`` (a
front member's weights written, its result not yet stored) and ``export`` (an output folder,
such as ``prunetune export``'s, half moved into place).
"""

from __future__ import annotations

import os
import signal

__all__ = ["fault_point", "POINTS"]

POINTS = ("study-created", "tier-a", "tier-b", "pareto", "export")
_seen: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("PRUNETUNE_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
