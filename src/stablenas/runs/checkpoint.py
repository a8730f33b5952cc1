"""Checkpoints are data, not code: read with ``torch.load(weights_only=True)`` and a format check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import (
    CheckpointError,
)

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = 2


# --------------------------------------------------------------------------------------------
# safe checkpoint loading


def load_checkpoint(path: str | Path, *, kind: str | None = None, map_location: Any = "cpu") -> dict:
    """A checkpoint read with ``weights_only=True``: tensors, numbers, strings, lists and dicts only.

    Anything else (a pickled object with code in ``__reduce__``, a torn write, another program's
    file, a checkpoint of another kind of run) is refused with one line."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint")
    try:
        st = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling refused, torn zip, not a torch file
        msg = str(e)
        if "Unsupported global" in msg or "GLOBAL" in msg:
            why = "it holds Python objects other than tensors and numbers (refused: loading it could run code)"
        else:
            detail = next((ln.strip() for ln in msg.splitlines()[::-1] if ln.strip().startswith("Unsupported")),
                          msg.splitlines()[0][:120] if msg else "")
            why = f"not a readable checkpoint ({type(e).__name__}: {detail}; torn write or another program's file?)"
        raise CheckpointError(f"{path}: {why}; delete it to restart the run, or restore a good copy") from None
    if not isinstance(st, dict):
        raise CheckpointError(f"{path}: not a stablenas checkpoint (holds a {type(st).__name__})")
    if st.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {st.get('format')!r}, this version reads "
                              f"{CHECKPOINT_FORMAT}; delete it to restart the run")
    if kind is not None and st.get("kind") != kind:
        raise CheckpointError(f"{path}: a {st.get('kind')} checkpoint, not a {kind} one")
    return st
