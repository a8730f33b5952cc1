"""The recurrent skeleton: a language model around one DARTS recurrent cell, on Penn Treebank.

Liu et al. 2019 (Sec. 3, App. A.1.2): embedding -> one recurrent cell (8 searched nodes, see
:mod:`stablenas.skeletons.rnn.model`) -> decoder tied to the embedding. Everything generic in the package
(alpha, op weights, every method's transform, first/second-order alpha updates, the curvature
tracker, discretisation by the skeleton's rule, checkpoints) runs on it unchanged; what is
recurrent lives here:

- data: the weights train on PTB train, alpha on PTB valid (the DARTS search script's
  ``search_data``), both as BPTT windows whose hidden state is carried from window to window
  (:class:`~stablenas.data.ptb.BPTTStream`; the weight stream uses the DARTS variable-length
  schedule); the per-epoch validation pass walks (a slice of) PTB valid in fixed windows;
- the loss: cross entropy per token; on the weight stream plus the temporal activation
  regulariser of DARTS (``tar`` * mean squared difference of consecutive hidden states);
- the weight step's learning rate is scaled per window by ``seq_len / bptt`` (DARTS);
- the metric: perplexity, exp of the per-token loss;
- genotypes: one (op, predecessor) per node (:mod:`stablenas.skeletons.rnn.genotype`).

CNN-structure capabilities (partial channels, node normalisation, edge betas; op modules with
weights of their own: the cell's ops are activations sharing the edge's weights; several cells:
there is one; op costs, `none` slots, DARTS-PT selection) are absent, so the methods that need
them refuse with one line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ...config import ConfigModel
from ...errors import ConfigError, GenotypeError
from ..base import CellGraph, SearchData, Skeleton, register_skeleton
from .genotype import RecurrentGenotype, derive_recurrent
from .space import CELL, RNN_SKELETON

if TYPE_CHECKING:
    from torch import nn

    from ...genotype import Genotype
    from ...spaces.catalog import SearchSpace
    from ...supernet.mix import Mix


class RNNSearchOptions(ConfigModel):
    """The language model and its data during the search (defaults: DARTS ``train_search.py``)."""

    emsize: int = Field(300, gt=0)  # = nhid (tied decoder)
    nhid: int = Field(300, gt=0)
    bptt: int = Field(35, gt=1)
    dropout: float = Field(0.75, ge=0.0, lt=1.0)  # cell output (locked)
    dropouth: float = Field(0.25, ge=0.0, lt=1.0)  # hidden states (variational)
    dropoutx: float = Field(0.75, ge=0.0, lt=1.0)  # cell input (variational)
    dropouti: float = Field(0.2, ge=0.0, lt=1.0)  # embedding output (locked)
    dropoute: float = Field(0.0, ge=0.0, lt=1.0)  # whole words (0 in the DARTS scripts)
    tar: float = Field(1e-3, ge=0.0)  # temporal activation regularisation on the weight step
    variable_bptt: bool = True  # the DARTS window-length schedule on the weight stream
    scale_lr: bool = True  # weight lr * seq_len / bptt per window
    batchnorm: bool = True  # BN without affine in the search cell (DARTS)
    train_tokens: int | None = Field(None, gt=0)  # first N tokens of PTB train for the weights
    alpha_tokens: int | None = Field(None, gt=0)  # first N tokens of PTB valid for alpha
    eval_tokens: int | None = Field(None, gt=0)  # first N tokens of PTB valid for the per-epoch pass
    verify: bool = True  # corpus MD5 check

    @model_validator(mode="after")
    def _tied(self) -> RNNSearchOptions:
        if self.emsize != self.nhid:
            raise ValueError(f"emsize ({self.emsize}) must equal nhid ({self.nhid}): the decoder is tied to the "
                             "embedding")
        return self


@register_skeleton
class RecurrentSkeleton(Skeleton):
    name = RNN_SKELETON
    description = "language model around one DARTS recurrent cell (Penn Treebank)"
    capabilities = frozenset()
    data_kind = "text"
    metric = "ppl"
    metric_label = "perplexity"
    eval_networks = ("ptb",)
    # every op is an activation on weights the cell owns (each counts as parameter-free): the share
    # would be 1 for every cell
    has_param_free_share = False
    Options = RNNSearchOptions

    # -- spaces ------------------------------------------------------------------------------
    def check_space(self, space: SearchSpace) -> None:
        if space.cell_types != (CELL,) or space.n_inputs != 1:
            raise ValueError(f"space {space.name!r}: the rnn skeleton needs one cell type {CELL!r} with one input")
        ops = space.edge_ops[CELL]
        if any(e != ops[0] for e in ops):
            raise ValueError(f"space {space.name!r}: the recurrent cell needs the same ops on every edge")

    def num_architectures(self, space: SearchSpace) -> int:
        n_ops = len([o for o in space.edge_ops[CELL][0] if o != "none"])
        return math.prod((i + 1) * n_ops for i in range(space.n_nodes))

    # -- data ---------------------------------------------------------------------------------
    def search_data(self, cfg: Any, device: torch.device, dataset: Any = None) -> SearchData:
        from ...data.ptb import BPTTStream, load_ptb

        o = self.parse_options(cfg.model)
        d = cfg.data
        corpus = dataset if dataset is not None else load_ptb(d.root, o.verify)
        train = corpus.train[: o.train_tokens] if o.train_tokens else corpus.train
        alpha = corpus.valid[: o.alpha_tokens] if o.alpha_tokens else corpus.valid
        ev = corpus.valid[: o.eval_tokens] if o.eval_tokens else corpus.valid
        for what, toks, bs in (("train_tokens", train, d.batch_size), ("alpha_tokens", alpha, d.batch_size),
                               ("eval_tokens", ev, d.eval_batch_size)):
            if toks.numel() // bs < 3:
                raise ConfigError(f"model.{what}: {toks.numel()} tokens do not make BPTT windows of batch {bs}; "
                                  "use more tokens or a smaller data.batch_size / data.eval_batch_size")
        tr = BPTTStream(train, d.batch_size, o.bptt, seed=cfg.seed * 1000 + 1, device=device,
                        variable=o.variable_bptt)
        val = BPTTStream(alpha, d.batch_size, o.bptt, seed=cfg.seed * 1000 + 2, device=device, variable=False,
                         infinite=True)
        val_eval = BPTTStream(ev, d.eval_batch_size, o.bptt, seed=0, device=device, variable=False)
        return SearchData(tr, val, val_eval, corpus.ntokens, 0, int(train.numel()), corpus)

    def fixed_val_loader(self, search: Any, batch_size: int, seed: int) -> Any:
        from ...data.ptb import BPTTStream

        o = search.model_options
        corpus = search.data.dataset
        alpha = corpus.valid[: o.alpha_tokens] if o.alpha_tokens else corpus.valid
        return BPTTStream(alpha, batch_size, o.bptt, seed=seed, device=search.device, variable=False)

    # -- supernet -----------------------------------------------------------------------------
    def build_supernet(self, space: SearchSpace, *, ntoken: int = 10000, emsize: int = 300, nhid: int = 300,
                       **kw: Any) -> nn.Module:
        from .model import RNNLanguageModel

        return RNNLanguageModel(ntoken, emsize, nhid, space=space, **kw)

    def supernet_from_config(self, space: SearchSpace, cfg: Any, data: SearchData) -> nn.Module:
        o = self.parse_options(cfg.model)
        return self.build_supernet(space, ntoken=data.num_classes, emsize=o.emsize, nhid=o.nhid, dropout=o.dropout,
                                   dropouth=o.dropouth, dropoutx=o.dropoutx, dropouti=o.dropouti,
                                   dropoute=o.dropoute, batchnorm=o.batchnorm)

    # -- loss and metrics ---------------------------------------------------------------------
    def check_data(self, cfg: Any) -> None:
        if cfg.data.dataset != "ptb":
            raise ConfigError(f"data.dataset: the rnn skeleton reads Penn Treebank; set data.dataset: ptb "
                              f"(got {cfg.data.dataset!r})")

    def weight_loss(self, search: Any, x: Any, y: torch.Tensor, mix: Mix) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross entropy per token plus DARTS's temporal activation regulariser (``tar`` * mean squared
        change of the hidden state between time steps); the record sums carry the plain cross entropy."""
        logits = search.forward(x, mix)
        ce = F.cross_entropy(logits, y)
        loss = ce
        tar = search.model_options.tar
        if tar and search.net.last_hidden is not None:
            h = search.net.last_hidden
            loss = ce + tar * (h[1:] - h[:-1]).pow(2).mean()
        with torch.no_grad():
            sums = torch.stack([ce.detach() * y.shape[0], (logits.argmax(1) == y).sum().to(ce.dtype),
                                torch.tensor(float(y.shape[0]), device=ce.device)])
        return loss, sums

    def weight_lr_scale(self, search: Any, batch: Any) -> float:
        o = search.model_options
        return batch[0].tokens.shape[0] / o.bptt if o.scale_lr else 1.0

    def epoch_metrics(self, prefix: str, loss: float, acc: float) -> dict:
        try:
            ppl = math.exp(loss)
        except OverflowError:
            ppl = float("inf")
        return {f"{prefix}_loss": loss, f"{prefix}_ppl": ppl, f"{prefix}_acc": acc}

    def format_metric(self, value: float) -> str:
        return f"{value:.2f}"

    def describe_network(self, cfg: Mapping) -> str:
        o = self.parse_options(cfg.get("model") or {})
        return f"recurrent cell, {o.nhid} hidden units (emsize {o.emsize}), BPTT {o.bptt}"

    def report_rows(self, cfg: Mapping) -> list[tuple[str, Any]]:
        o = self.parse_options(cfg.get("model") or {})
        return [("dropout: output / hidden / input / embedding",
                 f"{o.dropout} / {o.dropouth} / {o.dropoutx} / {o.dropouti}"),
                ("temporal activation regularisation (tar)", o.tar)]

    # -- genotypes ----------------------------------------------------------------------------
    def owns(self, genotype: Genotype) -> bool:
        return isinstance(genotype, RecurrentGenotype)

    def claims(self, d: Mapping) -> bool:
        return "recurrent" in d

    def genotype_from_dict(self, d: Mapping) -> Genotype:
        return RecurrentGenotype.from_dict(d)

    def genotype_to_dict(self, genotype: Genotype) -> dict:
        return self._rg(genotype).to_dict()

    def genotype_str(self, genotype: Genotype) -> str:
        return str(self._rg(genotype))

    def genotype_text(self, genotype: Genotype) -> str:
        g = self._rg(genotype)
        lines = ["node 0: highway(x_t, h_{t-1})"]
        lines += [f"node {i + 1}: {op} <- {p}" for i, (op, p) in enumerate(g.recurrent)]
        lines.append(f"h_t = mean of nodes {list(g.recurrent_concat)}")
        return "\n".join(lines) + "\n\n" + g.to_json()

    def validate_genotype(self, genotype: Genotype) -> None:
        self._rg(genotype).validate()

    def cell_types(self, genotype: Genotype) -> list[str]:
        return [CELL]

    def cell_pairs(self, genotype: Genotype, cell_type: str) -> tuple[tuple[str, int], ...]:
        return self._rg(genotype).cell(cell_type)

    def cell_graph(self, genotype: Genotype, cell_type: str) -> CellGraph:
        g = self._rg(genotype)
        nodes = tuple(((p, op),) for op, p in g.cell(cell_type))
        return CellGraph(1, nodes, tuple(g.recurrent_concat), concat=True, input_names=("s0",))

    def keep_per_node(self, space: SearchSpace, node: int) -> int:
        return 1

    def derive(self, space: SearchSpace, op_weights: Mapping[str, torch.Tensor],
               edge_weights: Mapping[str, torch.Tensor] | None = None) -> Genotype:
        return derive_recurrent(space, op_weights)

    def genotype_of(self, space: SearchSpace, hard: Mapping[str, Any], fallback: Genotype | None = None,
                    outputs: Mapping[str, tuple[int, ...]] | None = None) -> Genotype:
        choice = hard[CELL]
        pairs = []
        for node in range(space.n_nodes):
            kept = [(e, choice[e]) for e in space.node_edges(node) if choice[e] >= 0]
            if len(kept) != 1:
                raise GenotypeError(f"recurrent node {node + 1}: {len(kept)} kept edges, a recurrent genotype keeps 1")
            e, k = kept[0]
            pairs.append((space.edge_ops[CELL][e][k], space.edges[e][0]))
        concat = (outputs or {}).get(CELL, tuple(range(1, space.n_nodes + 1)))
        return RecurrentGenotype(space.name, tuple(pairs), tuple(concat))

    def genotype_edges(self, space: SearchSpace, genotype: Genotype, cell_type: str) -> list[tuple[int, str]]:
        g = self._rg(genotype)
        out = []
        for i, (op, p) in enumerate(g.cell(cell_type)):
            if not 0 <= p <= i or i >= space.n_nodes:
                raise ValueError(f"recurrent node {i + 1} reads {p}, which is not an edge of space {space.name}")
            out.append((space.node_edges(i)[p], op))
        return out

    # -- training and size (train / info) ------------------------------------------------------
    def train_command(self, genotype: Genotype, out: Any, *, preset: str | None, overrides: list[str] | None,
                      fields: dict[str, Any], resume: bool, progress: bool | None) -> tuple[dict, str]:
        from .train import rnn_train_config, train_recurrent

        for key in ("dataset", "layers", "network"):
            if fields.get(key) is not None:
                raise ConfigError(f"--{key} does not apply to a recurrent genotype (Penn Treebank language model); "
                                  "use --channels for the hidden units, --set for any other setting")
        units = fields.get("channels")
        cfg = rnn_train_config(preset or "ptb", overrides, epochs=fields.get("epochs"),
                               batch_size=fields.get("batch_size"), lr=fields.get("lr"), seed=fields.get("seed"),
                               data_root=fields.get("data_root"), emsize=units, nhid=units)
        r = train_recurrent(self._rg(genotype), cfg, out, resume=resume, progress=progress)
        parts = [f"valid ppl {r['valid_ppl']:.2f}"] + ([f"test ppl {r['test_ppl']:.2f}"] if "test_ppl" in r else [])
        return r, f"{'  '.join(parts)}  params {r['params'] / 1e6:.3f}M  epochs {r['epochs']}"

    def info_lines(self, genotype: Genotype, name: str, fields: dict[str, Any]) -> list[str]:
        from ...data.ptb import PTB_VOCAB
        from .train import count_rnn_params

        for key in ("network", "layers", "classes", "input_size"):
            if fields.get(key) is not None:
                raise ConfigError(f"--{key.replace('_', '-')} does not apply to a recurrent genotype; "
                                  "--channels sets the hidden units (default 850)")
        units = fields.get("channels") or 850
        n = count_rnn_params(self._rg(genotype), units, PTB_VOCAB)
        emb = PTB_VOCAB * units
        return [f"{name}: recurrent language model, {units} units (emsize = nhid), {PTB_VOCAB:,}-word vocabulary, "
                f"{self._rg(genotype).n_nodes} nodes",
                f"parameters:    {n / 1e6:.1f}M ({n:,}; decoder tied to the embedding: {emb:,} embedding, "
                f"{n - emb:,} cell + decoder bias)"]

    @staticmethod
    def _rg(genotype: Genotype) -> RecurrentGenotype:
        if not isinstance(genotype, RecurrentGenotype):
            raise GenotypeError(f"not a recurrent genotype: {genotype!r}")
        return genotype
