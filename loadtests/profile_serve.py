"""`loopgate serve` under cProfile (py-spy is not available here): the stats file is written
when the server stops (SIGTERM or SIGINT). Only the event loop's thread is profiled, by its
CPU time; the other threads' CPU (kafka-python's sender, the spool's fsync) is counted by
bench_shape's per-thread split.

    PYTHONPATH=$PWD .venv/bin/python -m loadtests.profile_serve OUT.prof serve --config ...
    .venv/bin/python -m pstats OUT.prof   # then: sort tottime, stats 30
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
import time
from types import FrameType


def main() -> None:
    """Run the CLI named by the remaining arguments with the profiler on."""
    out, sys.argv = sys.argv[1], ["loopgate", *sys.argv[2:]]

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    # uvicorn restores the handlers it found after draining and re-raises the signal: this one.
    signal.signal(signal.SIGTERM, stop)
    # The event loop thread's CPU time, not wall time: a C call that releases the GIL
    # (hmac.digest does) waits up to the switch interval for kafka-python's thread to give it
    # back, and a wall-clock profile would charge that wait to the call.
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        runpy.run_module("cli", run_name="__main__")
    finally:
        profiler.disable()
        profiler.dump_stats(out)


if __name__ == "__main__":
    main()
