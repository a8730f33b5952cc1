"""What a search saves and restores: its state dict (the checkpoint, and the in-memory snapshots
of a method's rollback) and the checkpoint files. A part of :class:`stablenas.search.loop.Search`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..genotype import Genotype
from ..methods import Method
from ..runs.checkpoint import load_checkpoint
from ..supernet import engine
from ..supernet.kernels import EngineOptions
from ..supernet.network import set_engine
from ..supernet.reshape import partial_channels, set_candidates
from ..utils import atomic_torch_save, rng_state, set_rng_state


class SearchState:
    """The checkpoint side of ``Search`` (mixed in; it reads and writes the search's state)."""

    def state_dict(self, *, exclude: Method | None = None, snapshot: bool = False) -> dict:
        """Everything a resume needs: tensors, numbers, strings, lists and dicts only (the
        checkpoint loads with ``weights_only=True``). ``exclude``: a method whose own state is left
        out; ``snapshot``: an in-memory copy for a rollback (no metrics records, no config)."""
        st = {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "net": self.net.state_dict(),
            "partial_channels": partial_channels(self.net),  # its shape: a progressive search widens it
            "arch": self.arch.state_dict(),  # with the op masks a progressive search prunes
            "w_optimizer": self.w_optimizer.state_dict(),
            "a_optimizer": self.a_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "methods": [None if m is exclude else m.state_dict() for m in self.methods],
            "train_loader": self.train_loader.state_dict(),
            "val_stream": self.val_stream.state_dict(),
            "rng": rng_state(),
            "accum": self._accum.cpu(),
            "stop_reason": self.stop_reason,
            "final_genotype": None if self.final_genotype is None else self.final_genotype.to_dict(),
            "epoch_seconds": self.epoch_seconds,  # training time of the current epoch so far
            "world": self.dist.world,  # ranks the run was on (a resume on another number is another run)
            # the engine options the run started with: a resume runs them, whatever the tuned file says now
            "engine": None if self.engine.options is None else asdict(self.engine.options),
        }
        if snapshot:
            st["n_metrics"] = len(self.metrics)
        else:
            st["metrics"] = self.metrics
            st["config"] = self.cfg.to_dict()
        return st

    def load_state_dict(self, st: dict, *, exclude: Method | None = None) -> None:
        """Restore :meth:`state_dict` (a checkpoint, or a rollback snapshot)."""
        # the supernet's shape first (the widened modules; the weights drawn here are overwritten)
        self.reshape_supernet(partial_channels=st.get("partial_channels", partial_channels(self.net)))
        self.net.load_state_dict(st["net"])
        self.arch.load_state_dict(st["arch"])
        set_candidates(self.net, {ct: self.arch.mask(ct) for ct in self.arch.cell_types})
        self.w_optimizer.load_state_dict(st["w_optimizer"])
        self.a_optimizer.load_state_dict(st["a_optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        for m, s in zip(self.methods, st["methods"]):
            if m is not exclude:
                m.load_state_dict(s)
        self.train_loader.load_state_dict(st["train_loader"])
        self.val_stream.load_state_dict(st["val_stream"])
        set_rng_state(st["rng"])
        self._accum = st["accum"].to(self.device).clone()
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self.epoch, self.step_in_epoch, self.global_step = st["epoch"], st["step_in_epoch"], st["global_step"]
        if "n_metrics" in st:
            self.metrics = self.metrics[: st["n_metrics"]]
        else:
            self.metrics = list(st["metrics"])
        self.stop_reason = st["stop_reason"]
        self.final_genotype = Genotype.from_dict(st["final_genotype"]) if st["final_genotype"] else None
        self.epoch_seconds = float(st["epoch_seconds"])
        self._saved_world = int(st.get("world", 1))
        self._keep_engine(st.get("engine"))
        self.net.drop_path_prob = self.drop_path_at(self.epoch)
        if self.step_in_epoch > 0:
            # mid-epoch state: per-epoch method schedules must be in force again
            for m in self.methods:
                if m is not exclude:
                    m.on_epoch_start(self, self.epoch)

    def _keep_engine(self, saved: dict | None) -> None:
        """Run the engine options a checkpoint was written with (a `bench --tune` file written since
        may choose others, and they round differently in float32)."""
        if saved is None or self.engine.options is None or saved == asdict(self.engine.options):
            return
        self.log(f"engine: running the checkpoint's options, not those of the {self.engine.source}")
        self.engine = engine.EngineChoice(EngineOptions(**saved), "the checkpoint's (the run started with them)")
        set_engine(self.net, self.engine.options)
        if self.run_dir is not None:
            self.run_dir.status_info["engine"] = self.engine.record()

    def write_metrics(self) -> None:
        """Rewrite metrics.jsonl from ``self.metrics`` (after a resume or a rollback)."""
        if self.run_dir is not None:
            self.run_dir.write_metrics(self.metrics)

    def save_checkpoint(self, path: Path | None = None) -> None:
        """Atomic; refuses (DivergedError) to overwrite the last good checkpoint with a bad state."""
        if self.run_dir is None and path is None:
            if self.out_dir is not None:  # another rank: rank 0 saved this very state
                self.check_finite()
                self._last_good = (self.epoch, self.step_in_epoch)
            return
        self.check_finite()
        if path is not None:
            atomic_torch_save({"format": 2, "kind": "search", **self.state_dict()}, path)
            return
        self.run_dir.save_checkpoint(self.state_dict())
        self._last_good = (self.epoch, self.step_in_epoch)

    def load_checkpoint(self, path: Path | None = None) -> None:
        """Load a search checkpoint (read with weights_only=True) into this search, e.g. for
        analysis; resuming a run directory goes through ``Search(..., resume=True)``."""
        if path is None:
            if self.run_dir is None:
                raise ValueError("load_checkpoint: no path and no run directory")
            path = self.run_dir.checkpoint
        self._apply_checkpoint(load_checkpoint(path, kind="search"), Path(path))
