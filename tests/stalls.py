"""A producer that stops making progress on one clip without dying, as a decoder stuck on a file
or a filesystem that stopped answering would, for tests/test_schedules.py.

Importable by the worker processes a test's run spawns (they unpickle the producer by name).
"""

from __future__ import annotations

import threading

from fercli.job.stages import NO_CLOCK, Producer

STUCK = "stuck.mp4"  # the clip it hangs on


class StallingProducer(Producer):
    def samples(self, clip, detector, clock=NO_CLOCK):
        if clip.name == STUCK:
            threading.Event().wait()  # for ever: nothing is sent, nothing dies
        return super().samples(clip, detector, clock)
