"""A long repair run's finished steps on disk, so that an interrupted run resumes where it stopped.

    done = Checkpoint("out/progress.json", checkpoint_key(model, settings, cases), resume=True)
    if done.state["cases"].get("3") is None:
        done.state["cases"]["3"] = repair_case(...)
        done.save()                     # atomic: a crash leaves the old file or the new one

Each repair is undone before the next (:meth:`codecircuits.repair.Edits.undo` restores the weights bit for bit), so
the resumed results equal an uninterrupted run's (times aside). The key names the run (model, settings, cases): a
file written by another run is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import InputError


class Checkpoint:
    """Finished steps in a JSON file (``state``: ``"key"``, ``"sweep"``, ``"cases"`` and ``"successive"``),
    rewritten atomically by :meth:`save`. ``path=None`` keeps the state in memory only; ``resume`` reads a file
    that exists, which must carry the same ``key``."""

    def __init__(self, path, key: str, resume: bool):
        self.path = None if path is None else Path(path)
        self.state = {"key": key, "sweep": None, "cases": {}, "successive": {}}
        if resume and self.path is not None and self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("key") != key:
                raise InputError(
                    f"{self.path} was written by a run with other settings, model or cases; delete it, give "
                    "another --out, or run without --resume to start afresh."
                )
            self.state = saved

    def save(self) -> None:
        """Write the state (to a temporary file, then renamed over the checkpoint)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.state))
        os.replace(tmp, self.path)


def checkpoint_key(model, settings: dict, cases) -> str:
    """The key of a run: a hash of the model's name, the ``settings`` that change results and the repair cases."""
    ident = {
        "model": str(model.cfg.model_name),
        "config": settings,
        "cases": [[c.source, c.line_no, list(c.reference), list(c.predicted)] for c in cases],
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
