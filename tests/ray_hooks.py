"""Runs in every Ray worker of the test cluster (a `worker_process_setup_hook`): when the test
asks for it, the worker that computes the LM batch named in the control file kills itself with
SIGKILL right after that batch is cached, once."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path


def setup() -> None:
    control = Path(os.environ["ST_TEST_RAY_CONTROL"])
    from st.encoder import Encoder

    real_encode = Encoder.encode

    def encode(self, texts, *args, **kwargs):
        order = control / "kill-after-batches"
        if not order.exists():
            return real_encode(self, texts, *args, **kwargs)
        batches = {"n": 0, "docs": 0}
        user_on_batch = kwargs.get("on_batch")
        before = self.lm.documents_computed

        def on_batch(n: int) -> None:
            if user_on_batch:
                user_on_batch(n)
            if self.lm.documents_computed > before + batches["docs"]:  # a computed batch, now cached
                batches["docs"] = self.lm.documents_computed - before
                batches["n"] += 1
                try:
                    if batches["n"] < int(order.read_text()):
                        return
                    order.unlink()  # only one worker wins; only once
                except (FileNotFoundError, ValueError):
                    return
                (control / "killed.json").write_text(json.dumps({"docs": batches["docs"], "pid": os.getpid()}))
                os.kill(os.getpid(), signal.SIGKILL)

        kwargs["on_batch"] = on_batch
        return real_encode(self, texts, *args, **kwargs)

    Encoder.encode = encode
