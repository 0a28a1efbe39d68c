"""Named crash points for testing resume: INFMIX_FAILPOINTS=name[,name...] makes the process
SIGKILL itself when it reaches one, exactly as a crash at that moment would. Unset (always,
outside tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def hit(name: str) -> None:
    points = os.environ.get("INFMIX_FAILPOINTS")
    if points and name in points.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
