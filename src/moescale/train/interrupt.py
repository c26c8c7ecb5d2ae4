"""Ctrl-C during training: finish the step, save a checkpoint there, then stop.

Why: a KeyboardInterrupt raised wherever Python happens to be loses every step since the last
checkpoint (`checkpoint_every` apart: 45 steps in a walkthrough of a small run). Deferred to the
end of the step, the run resumes exactly where Ctrl-C found it. A second Ctrl-C stops at once,
as before. One process only: with several ranks the checkpoint is collective and every rank
would have to agree on the step, so torchrun runs keep the immediate stop; so does a process
whose SIGINT is not Python's default (ignored under `nohup`, or handled by the caller).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger(__name__)


class CtrlC:
    """`asked` once SIGINT came; `stop_if_asked(step)` after a step's checkpoint raises
    KeyboardInterrupt; `restore()` puts the previous handler back."""

    def __init__(self, enabled: bool) -> None:
        self.asked = False
        self.previous: Any = None
        default = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        if enabled and default and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._ask)

    def _ask(self, signum: int, frame: Any) -> None:
        self.asked = True
        signal.signal(signal.SIGINT, self.previous)  # a second Ctrl-C interrupts at once
        logger.warning("Ctrl-C: stopping after this step, with a checkpoint there "
                       "(Ctrl-C again to stop at once)")  # fmt: skip

    def stop_if_asked(self, step: int) -> None:
        if self.asked:
            logger.warning(f"stopped after step {step}, its checkpoint saved: run the same "
                           "command again to resume")  # fmt: skip
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self.previous is not None and not self.asked:
            signal.signal(signal.SIGINT, self.previous)
