"""DARTS-PT (Wang et al., ICLR 2021, "Rethinking Architecture Selection in Differentiable NAS"):
perturbation-based architecture selection after any search method.

The run is ``search_epochs`` epochs of the configured search followed by a selection phase in the
same loop (checkpoints, resume, guards, data parallelism unchanged). Selection follows the authors'
``sota/cnn/projection.py`` (DARTS skeleton) and ``nasbench201/projection.py`` (NB201):

- *Op decision* on one undecided edge per cell type: for each candidate op, evaluate the supernet
  on the validation split with that op's weight set to 0 on the edge (no renormalisation, batch
  norm on batch statistics: their ``infer(..., _eval=False)``); keep the op whose removal hurts most
  (``criterion: acc``: lowest accuracy; ``loss``: highest loss; ties to the earlier op). The edge's
  op weights become one-hot in every phase from then on (their ``proj_weights``), so its alpha no
  longer reaches the network.
- *Node decision* (DARTS skeleton only; NB201 keeps every edge): for one node with more incoming
  edges than ``inputs_per_node``, evaluate with each incoming edge's weights zeroed and keep the
  ``inputs_per_node`` edges whose removal hurts most; the others get zero weights. The authors
  eliminate edges one at a time but re-evaluate the same single-edge removals each round, so their
  result is this ranking (ties to the earlier edge, as their ``>=`` elimination gives).
- Order: all op decisions, then all node decisions; within each, ``edge_decision: random`` (their
  scripts) draws the next edge/node from a generator seeded by the config seed, ``sgas`` takes the
  undecided edge with the largest SGAS score (Li et al., CVPR 2020, criterion 1: edge importance,
  the summed non-`none` op weight, times selection certainty, 1 - normalised entropy of those
  weights; nodes in index order).
- Schedule: the first decision at the end of the last search epoch (their epoch 0 of tuning), then
  one every ``proj_intv`` epochs of fine-tuning; after the last decision the genotype is pinned and
  the run ends. ``optim.epochs`` must hold ``search_epochs + (decisions - 1) * proj_intv`` (checked at
  load). On NB201 the authors' last interval is one epoch shorter; here all intervals are equal.
- Fine-tuning: the weight optimiser restarts (momentum cleared) at ``lr_ratio * optim.lr`` (their
  ``reset_optimizer(learning_rate / 10)``), cosine to ``optim.lr_min`` over their ``tune_epochs =
  proj_intv * (decisions - 1) + 1`` (``sota/cnn/projection.py``; ``tune_schedule: constant`` keeps
  the restart lr, as ``nasbench201/projection.py`` does). The search phase is a standalone search of
  ``search_epochs``: the method declares them as ``schedule_epochs``, so the lr's cosine and every
  epoch schedule of a composed method (SDARTS's radius, DARTS-'s beta, GDAS's and SNAS's temperature,
  beta-DARTS's and Lambda-DARTS's strength, the drop-path ramp) span them and then stay at their end
  value, as the authors' SDARTS-PT tunes at the largest radius. Alpha keeps training on undecided edges,
  as the authors' tuning loop calls ``architect.step``; ``freeze_alpha`` stops it (the loop's
  ``Method.freezes_alpha``).

On the DARTS skeleton `none` is never an op candidate: DARTS genotypes hold no `none`, and masking
its zero output changes nothing, so in the authors' loop it wins only when no other removal hurts
(their genotype parse then falls back to the first non-`none` op). The recurrent cell has no
DARTS-PT procedure: a config error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from ..errors import ConfigError
from ..registry import METHODS, OPS, SKELETONS
from ..spaces.catalog import get_space
from ..supernet.mix import Mix
from ._common import genotype_of
from .base import Batch, Method, MethodOptions, register_method

if TYPE_CHECKING:
    from .context import SearchContext


class DartsPTOptions(MethodOptions):
    # sota/cnn/train_search.py --epochs 50, then pt_project
    search_epochs: int = Field(50, ge=1,
                               description="epochs of the DARTS search before the perturbation-based selection")
    # exp_scripts/*-proj-*.sh --proj_intv 5
    proj_intv: int = Field(5, ge=1, description="fine-tuning epochs between two selection decisions")
    # --proj_crit_normal/_reduce/_edge acc
    criterion: Literal["acc", "loss"] = Field(
        "acc",
        description="score of masking an op: the drop in validation accuracy or the rise in loss")
    # --edge_decision random (the only one coded)
    edge_decision: Literal["random", "sgas"] = Field(
        "random",
        description="which edge is decided next: random, or the largest SGAS score")
    # None: search.val_batches (unset: whole split, their proj_queue)
    val_batches: int | None = Field(
        None, gt=0,
        description="validation batches per score (null: search.val_batches; unset: the whole split)")
    # infer(..., _eval=False): batch statistics
    bn: Literal["train", "eval"] = Field(
        "train",
        description="BatchNorm while scoring: batch statistics (train) or running ones (eval)")
    # model.reset_optimizer(args.learning_rate / 10, ...)
    lr_ratio: float = Field(0.1, gt=0.0, description="fine-tuning learning rate as a fraction of optim.lr")
    # sota/cnn/projection.py: cosine to lr_min
    tune_schedule: Literal["cosine", "constant"] = Field(
        "cosine",
        description="fine-tuning learning rate: cosine down to optim.lr_min, or constant")
    # their tuning loop keeps calling architect.step
    freeze_alpha: bool = Field(False, description="stop the alpha steps while fine-tuning")


def decision_nodes(space) -> list[int]:
    """Nodes that get a node decision: those with more incoming edges than the skeleton keeps
    (none where it keeps every edge, NB201)."""
    sk = SKELETONS[space.skeleton]
    return [i for i in range(space.n_nodes) if len(space.node_edges(i)) > sk.keep_per_node(space, i)]


def n_decisions(space) -> int:
    """Decision epochs: one per edge, then one per node (every cell type decides in each)."""
    return space.n_edges + len(decision_nodes(space))


def sgas_scores(w: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """SGAS criterion 1 per edge (Li et al. 2020, Sec. 3.2): edge importance (summed op weights of
    ``valid``) times selection certainty, 1 - H(p) / log K of those weights normalised to p."""
    w = w.detach().float() * valid
    importance = w.sum(-1)
    p = w / importance.clamp_min(1e-30).unsqueeze(-1)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    k = valid.sum(-1).float()
    certainty = torch.where(k > 1, 1.0 - ent / torch.log(k.clamp_min(2.0)), torch.ones_like(ent))
    return importance * certainty


@register_method
class DartsPT(Method):
    name = "darts-pt"
    paper = "Wang et al., ICLR 2021: 'Rethinking Architecture Selection in Differentiable NAS'"
    description = "DARTS-PT: perturbation-based selection (mask each op / edge, keep what hurts most) with fine-tuning"
    preset = "darts-pt"
    Options = DartsPTOptions

    @classmethod
    def validate(cls, cfg, options) -> None:
        super().validate(cfg, options)
        space = get_space(cfg.space)
        SKELETONS[space.skeleton].require("perturbation_selection", "method darts-pt")
        after = [m.name for m in cfg.methods[[m.name for m in cfg.methods].index(cls.name) + 1:]
                 if METHODS[m.name].transform is not Method.transform]
        if after:
            raise ConfigError(f"method darts-pt must come after every method that edits op weights ({', '.join(after)} "
                              "follow it): its decided edges override the op weights the others hand on")
        need = options.search_epochs + (n_decisions(space) - 1) * options.proj_intv
        if cfg.optim.epochs < need:
            raise ConfigError(f"method darts-pt needs optim.epochs >= {need} on space {cfg.space} (search_epochs "
                              f"{options.search_epochs} + {n_decisions(space) - 1} decisions after the first x "
                              f"proj_intv {options.proj_intv}); got {cfg.optim.epochs}")

    @classmethod
    def schedule_epochs(cls, cfg, options) -> int:
        return options.search_epochs

    def setup(self, search: SearchContext) -> None:
        space = search.space
        self.cell_types = list(space.cell_types)
        self.nodes = decision_nodes(space)
        self.n_decisions = n_decisions(space)
        self.op_choice = {ct: [-1] * space.n_edges for ct in self.cell_types}
        self.dropped = {ct: [False] * space.n_edges for ct in self.cell_types}
        self.nodes_done = {ct: [] for ct in self.cell_types}
        self.gen = torch.Generator().manual_seed(search.cfg.seed * 7919 + 11)
        self._tables: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- schedule ------------------------------------------------------------------------------
    def decision_at(self, epoch: int) -> int | None:
        """The decision (0-based) made at the end of ``epoch``, None for none."""
        k, r = divmod(epoch - (self.opts.search_epochs - 1), self.opts.proj_intv)
        return k if epoch >= self.opts.search_epochs - 1 and r == 0 and k < self.n_decisions else None

    def selecting(self, search: SearchContext) -> bool:
        return search.epoch >= self.opts.search_epochs

    def freezes_alpha(self, search: SearchContext) -> bool:
        return self.opts.freeze_alpha and self.selecting(search)

    def on_epoch_start(self, search: SearchContext, epoch: int) -> None:
        if epoch != self.opts.search_epochs or search.step_in_epoch != 0:
            return
        # the authors' reset_optimizer: a fresh SGD at lr * lr_ratio, its own cosine over tune_epochs
        o = search.cfg.optim
        lr = o.lr * self.opts.lr_ratio
        tune_epochs = self.opts.proj_intv * (self.n_decisions - 1) + 1
        search.restart_weight_schedule(lr, tune_epochs, o.lr_min if self.opts.tune_schedule == "cosine" else lr)

    # -- the projected op weights ----------------------------------------------------------------
    def tables(self, search: SearchContext) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per cell type: which edges are fixed ``[E, 1]`` and their weights ``[E, K]`` (one-hot on
        the decided op, zero on a dropped edge)."""
        if self._tables is None:
            out = {}
            for ct in self.cell_types:
                fixed = torch.tensor([k >= 0 or d for k, d in zip(self.op_choice[ct], self.dropped[ct])])
                vals = torch.zeros(search.arch.alphas[ct].shape)
                for e, (k, d) in enumerate(zip(self.op_choice[ct], self.dropped[ct])):
                    if k >= 0 and not d:
                        vals[e, k] = 1.0
                out[ct] = (fixed.unsqueeze(-1).to(search.device), vals.to(search.device))
            self._tables = out
        return self._tables

    def transform(self, search: SearchContext, mix: Mix, phase: str, batch: Batch | None) -> Mix:
        if all(k < 0 for ct in self.cell_types for k in self.op_choice[ct]):
            return mix
        tabs = self.tables(search)
        op = {ct: torch.where(tabs[ct][0], tabs[ct][1].to(w.dtype), w) if ct in tabs else w
              for ct, w in mix.op.items()}
        hard = None
        if mix.hard is not None:  # a sampler's discrete path (GDAS) takes the decisions too
            hard = {ct: list(ks) for ct, ks in mix.hard.items()}
            for ct, ks in hard.items():
                for e, (k, d) in enumerate(zip(self.op_choice.get(ct, ()), self.dropped.get(ct, ()))):
                    if d or k >= 0:
                        ks[e] = -1 if d else k
        return mix.replace(op=op, hard=hard)

    # -- decisions -------------------------------------------------------------------------------
    def score(self, search: SearchContext, ct: str, zero: tuple[int, int | None]) -> float:
        """The criterion with edge ``zero[0]``'s op ``zero[1]`` (None: the whole edge) set to 0, as
        a number where smaller means the removal hurts more."""
        base = search.mix("eval").detached()
        w = base.op[ct].clone()
        e, k = zero
        if k is None:
            w[..., e, :] = 0.0
        else:
            w[..., e, k] = 0.0
        loss, acc = search.evaluate(max_batches=self.opts.val_batches, mix=base.replace(op={**base.op, ct: w}),
                                    bn=self.opts.bn)
        return acc if self.opts.criterion == "acc" else -loss

    def next_edge(self, search: SearchContext, ct: str) -> int:
        left = [e for e, k in enumerate(self.op_choice[ct]) if k < 0]
        if self.opts.edge_decision == "random":
            return left[int(torch.randint(len(left), (1,), generator=self.gen))]
        w = search.mix("eval").op[ct]
        w = w.mean(0) if w.dim() == 3 else w
        scores = sgas_scores(w, self.candidates_mask(search, ct))
        return max(left, key=lambda e: (float(scores[e]), -e))

    def candidates(self, search: SearchContext, ct: str, e: int) -> list[int]:
        ops = search.space.edge_ops[ct][e]
        zero_ok = search.skeleton.zero_is_choice(search.space)  # NB201: `none` may win an edge
        keep = [k for k, name in enumerate(ops) if zero_ok or not OPS[name].is_zero]
        return keep or list(range(len(ops)))

    def candidates_mask(self, search: SearchContext, ct: str) -> torch.Tensor:
        m = torch.zeros(search.arch.alphas[ct].shape, dtype=torch.bool)
        for e in range(search.space.n_edges):
            m[e, self.candidates(search, ct, e)] = True
        return m.to(search.device)

    def decide_op(self, search: SearchContext, ct: str) -> dict:
        e = self.next_edge(search, ct)
        ks = self.candidates(search, ct, e)
        scores = [self.score(search, ct, (e, k)) for k in ks]
        best = ks[min(range(len(ks)), key=lambda i: (scores[i], i))]
        self.op_choice[ct][e] = best
        self._tables = None
        return {"edge": e, "op": search.space.edge_ops[ct][e][best], self.opts.criterion: self.report(scores)}

    def decide_node(self, search: SearchContext, ct: str) -> dict:
        left = [i for i in self.nodes if i not in self.nodes_done[ct]]
        node = left[int(torch.randint(len(left), (1,), generator=self.gen))] \
            if self.opts.edge_decision == "random" else left[0]
        edges = list(search.space.node_edges(node))
        scores = [self.score(search, ct, (e, None)) for e in edges]
        order = sorted(range(len(edges)), key=lambda i: (scores[i], i))
        kept = sorted(edges[i] for i in order[: search.skeleton.keep_per_node(search.space, node)])
        for e in edges:
            self.dropped[ct][e] = e not in kept
        self.nodes_done[ct].append(node)
        self._tables = None
        return {"node": node, "inputs": kept, self.opts.criterion: self.report(scores)}

    def report(self, scores: list[float]) -> list[float]:
        return [round(s if self.opts.criterion == "acc" else -s, 6) for s in scores]

    def hard(self) -> dict[str, list[int]]:
        return {ct: [-1 if d else k for k, d in zip(self.op_choice[ct], self.dropped[ct])] for ct in self.cell_types}

    def on_epoch_end(self, search: SearchContext, epoch: int, record: dict) -> None:
        k = self.decision_at(epoch)
        if k is None:
            return
        step = {}
        for ct in self.cell_types:  # normal, then reduce (seeing the normal decision), as the authors
            step[ct] = self.decide_op(search, ct) if k < search.space.n_edges else self.decide_node(search, ct)
        record["darts_pt"] = {"decision": k + 1, "of": self.n_decisions, **step}
        if k + 1 == self.n_decisions:
            g = genotype_of(search.space, self.hard())
            more = epoch + 1 < search.cfg.optim.epochs
            search.set_outcome(genotype=g, stop="darts-pt: every edge and node decided" if more else None)
            record["genotype"] = g.to_dict()

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"op_choice": {ct: list(v) for ct, v in self.op_choice.items()},
                "dropped": {ct: list(v) for ct, v in self.dropped.items()},
                "nodes_done": {ct: list(v) for ct, v in self.nodes_done.items()},
                "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.op_choice = {ct: list(v) for ct, v in state["op_choice"].items()}
        self.dropped = {ct: list(v) for ct, v in state["dropped"].items()}
        self.nodes_done = {ct: list(v) for ct, v in state["nodes_done"].items()}
        self.gen.set_state(state["gen"])
        self._tables = None


__all__ = ["DartsPT", "DartsPTOptions", "decision_nodes", "n_decisions", "sgas_scores"]
