"""How a run stops early: on a signal (finish the step, save, exit) or a non-finite loss, with a message that
says how to go on."""

from __future__ import annotations

import signal
import threading

from cifarkit.errors import CifarkitError


class TrainingStopped(CifarkitError):
    """The run stopped early (a signal, a non-finite loss); the message says how to go on."""

    exit_code = 1


class TrainingInterrupted(TrainingStopped):
    """Stopped on request and saved: not an error, and the CLI does not call it one."""

    exit_code = 130
    label = "stopped"


class StopRequests:
    """SIGINT/SIGTERM: the first asks the loop to finish its step, save and exit; a second SIGINT exits at
    once (Python's own KeyboardInterrupt)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C is not caught

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
