"""The DARTS recurrent cell (search and discrete) and the language model around it.

Cell (Liu et al. 2019, Sec. 3 / App. A.1.2, and the released ``rnn/model.py``): node 0 is a
highway mix of the input and the previous hidden state, ``[c0, h0] = [x_t, h_{t-1}] W0``,
``s0 = h_{t-1} + sigmoid(c0) * (tanh(h0) - h_{t-1})``; node i reads a predecessor s_j through its
own map ``[c, h] = s_j W_i`` and is ``s_j + sigmoid(c) * (f(h) - s_j)`` with f the op's activation;
``h_t`` is the mean of nodes 1..8. During the search every node mixes all (op, predecessor)
pairs with the op weights, and a batch norm without affine parameters normalises s0 and every
node (one shared module, as in the DARTS search cell); the discrete cell has no batch norm.

The mixture of node i is computed for all its predecessors and ops at once: the i+1 predecessor
states go through W_i as one matmul, and since each mixed term is s_j + c_j * (f_k(h_j) - s_j),
the sum over ops splits into ``(sum_k w_jk) * (1 - c_j) * s_j + c_j * sum_k w_jk f_k(h_j)``: one
einsum over the stacked activations, no loop over ops or predecessors. (There is one kernel per
distinct activation function; `none` contributes nothing.)

Regularisation (AWD-LSTM style, as DARTS uses it): variational dropout masks on x (``dropoutx``)
and on h (``dropouth``, applied to every state before its linear map), sampled once per forward
and shared over time; locked dropout on the embedding output (``dropouti``) and on the cell
output (``dropout``); embedding dropout that drops whole words (``dropoute``). Init: everything
uniform in [-0.04, 0.04], decoder bias 0, decoder weight tied to the embedding.

Op weights come from outside (``forward(x, op_weights)``), as in the CNN supernet, so methods
can perturb, shift or sample them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...data.ptb import RNNInput
from ...spaces.catalog import SearchSpace
from .genotype import RecurrentGenotype
from .space import ACTIVATIONS, CELL

INIT_RANGE = 0.04


def variational_mask(like: torch.Tensor, shape: Sequence[int], p: float) -> torch.Tensor | None:
    """Bernoulli(1 - p) / (1 - p) mask of ``shape``; ``None`` when p = 0."""
    if p <= 0.0:
        return None
    return like.new_empty(shape).bernoulli_(1.0 - p).div_(1.0 - p)


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with one mask per sequence, shared over time (x: (T, B, H))."""
    if not training or p <= 0.0:
        return x
    return x * variational_mask(x, (1, x.shape[1], x.shape[2]), p)


def embedding_dropout(embed: nn.Embedding, tokens: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop whole rows of the embedding matrix (words), rescaling the kept ones (Gal & Ghahramani)."""
    if not training or p <= 0.0:
        return embed(tokens)
    mask = embed.weight.new_empty((embed.weight.shape[0], 1)).bernoulli_(1.0 - p).div_(1.0 - p)
    return F.embedding(tokens, embed.weight * mask)


class _CellBase(nn.Module):
    def __init__(self, ninp: int, nhid: int, steps: int, dropouth: float, dropoutx: float):
        super().__init__()
        self.ninp, self.nhid, self.steps = ninp, nhid, steps
        self.dropouth, self.dropoutx = dropouth, dropoutx
        self.W0 = nn.Parameter(torch.empty(ninp + nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE))
        self.Ws = nn.Parameter(torch.empty(steps, nhid, 2 * nhid).uniform_(-INIT_RANGE, INIT_RANGE))

    def init_state(self, x: torch.Tensor, h_prev: torch.Tensor, x_mask: torch.Tensor | None,
                   h_mask: torch.Tensor | None) -> torch.Tensor:
        """s0: the highway mix of x_t and h_{t-1}."""
        xm = x if x_mask is None else x * x_mask
        hm = h_prev if h_mask is None else h_prev * h_mask
        c0, h0 = torch.cat([xm, hm], dim=-1).mm(self.W0).split(self.nhid, dim=-1)
        return h_prev + torch.sigmoid(c0) * (torch.tanh(h0) - h_prev)

    def masks(self, inputs: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.training:
            return None, None
        B = inputs.shape[1]
        return (variational_mask(inputs, (B, self.ninp), self.dropoutx),
                variational_mask(inputs, (B, self.nhid), self.dropouth))


class SearchCell(_CellBase):
    """The mixed recurrent cell of a space (36 edges for 8 nodes)."""

    def __init__(self, space: SearchSpace, ninp: int, nhid: int, dropouth: float = 0.0, dropoutx: float = 0.0,
                 batchnorm: bool = True):
        super().__init__(ninp, nhid, space.n_nodes, dropouth, dropoutx)
        self.space = space
        ops = space.edge_ops[CELL]
        if any(e != ops[0] for e in ops):
            raise ValueError(f"space {space.name!r}: the recurrent cell needs the same ops on every edge")
        self.op_names = ops[0]
        self.active = [k for k, o in enumerate(self.op_names) if o != "none"]
        self.acts = [ACTIVATIONS[self.op_names[k]] for k in self.active]
        self.bn = nn.BatchNorm1d(nhid, affine=False) if batchnorm else None
        self.offsets = [sum(range(1, i + 1)) for i in range(self.steps + 1)]  # first edge of node i

    def _norm(self, s: torch.Tensor) -> torch.Tensor:
        return s if self.bn is None else self.bn(s)

    def step(self, x: torch.Tensor, h_prev: torch.Tensor, w: torch.Tensor, x_mask: torch.Tensor | None,
             h_mask: torch.Tensor | None) -> torch.Tensor:
        """One time step; ``w``: (edges, n_active) op weights of the non-`none` ops."""
        states = self._norm(self.init_state(x, h_prev, x_mask, h_mask)).unsqueeze(0)  # (1, B, H)
        wsum = w.sum(-1)  # (edges,)
        for i in range(self.steps):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            masked = states if h_mask is None else states * h_mask
            c, h = torch.matmul(masked, self.Ws[i]).split(self.nhid, dim=-1)  # (i+1, B, H) each
            c = torch.sigmoid(c)
            f = torch.stack([a(h) for a in self.acts])  # (K', i+1, B, H)
            mixed = torch.einsum("jk,kjbh->jbh", w[lo:hi], f)
            s = (wsum[lo:hi, None, None] * (1.0 - c) * states + c * mixed).sum(0)
            states = torch.cat([states, self._norm(s).unsqueeze(0)], 0)
        return states[1:].mean(0)

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor, op_weights: torch.Tensor,
                hard: Sequence[int] | None = None) -> torch.Tensor:
        """inputs (T, B, ninp), hidden (B, nhid), op weights (edges, K) -> hidden states (T, B, nhid)."""
        w = op_weights
        if hard is not None:  # only the chosen op of each edge contributes (-1: the edge is not kept)
            sel = torch.zeros_like(w)
            rows = [e for e, k in enumerate(hard) if k >= 0]
            if rows:
                sel[rows, [hard[e] for e in rows]] = 1.0
            w = w * sel
        w = w[:, self.active]
        x_mask, h_mask = self.masks(inputs)
        out = []
        for t in range(inputs.shape[0]):
            hidden = self.step(inputs[t], hidden, w, x_mask, h_mask)
            out.append(hidden)
        return torch.stack(out)


class DiscreteCell(_CellBase):
    """The cell of a genotype: node i reads its one predecessor through W_i and its activation."""

    def __init__(self, genotype: RecurrentGenotype, ninp: int, nhid: int, dropouth: float = 0.0,
                 dropoutx: float = 0.0):
        super().__init__(ninp, nhid, genotype.n_nodes, dropouth, dropoutx)
        self.genotype = genotype
        self.acts = [ACTIVATIONS[op] for op, _ in genotype.recurrent]
        self.preds = [p for _, p in genotype.recurrent]
        self.concat = list(genotype.concat())

    def step(self, x: torch.Tensor, h_prev: torch.Tensor, x_mask: torch.Tensor | None,
             h_mask: torch.Tensor | None) -> torch.Tensor:
        states = [self.init_state(x, h_prev, x_mask, h_mask)]
        for i in range(self.steps):
            s_prev = states[self.preds[i]]
            sm = s_prev if h_mask is None else s_prev * h_mask
            c, h = sm.mm(self.Ws[i]).split(self.nhid, dim=-1)
            states.append(s_prev + torch.sigmoid(c) * (self.acts[i](h) - s_prev))
        return torch.stack([states[j] for j in self.concat]).mean(0)

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor, op_weights: torch.Tensor | None = None,
                hard: Sequence[int] | None = None) -> torch.Tensor:
        x_mask, h_mask = self.masks(inputs)
        out = []
        for t in range(inputs.shape[0]):
            hidden = self.step(inputs[t], hidden, x_mask, h_mask)
            out.append(hidden)
        return torch.stack(out)


class RNNLanguageModel(nn.Module):
    """Embedding -> recurrent cell -> tied decoder; logits ``(T * B, ntoken)`` for next-word targets.

    ``forward(x, op_weights)`` takes an :class:`RNNInput` (tokens plus carried hidden state) or a
    token tensor (zero initial state), and reports the final hidden state back to the input's stream.
    ``last_hidden`` holds the raw cell outputs of the last forward (for the temporal activation
    regulariser of the training loss).
    """

    def __init__(self, ntoken: int, ninp: int, nhid: int, *, space: SearchSpace | None = None,
                 genotype: RecurrentGenotype | None = None, dropout: float = 0.75, dropouth: float = 0.25,
                 dropoutx: float = 0.75, dropouti: float = 0.2, dropoute: float = 0.0, batchnorm: bool = True):
        super().__init__()
        if ninp != nhid:
            raise ValueError(f"the tied decoder needs emsize == nhid, got {ninp} and {nhid}")
        if (space is None) == (genotype is None):
            raise ValueError("give exactly one of space (search cell) or genotype (discrete cell)")
        self.ntoken, self.ninp, self.nhid = ntoken, ninp, nhid
        self.dropout, self.dropouti, self.dropoute = dropout, dropouti, dropoute
        self.encoder = nn.Embedding(ntoken, ninp)
        if space is not None:
            self.cell: nn.Module = SearchCell(space, ninp, nhid, dropouth, dropoutx, batchnorm)
        else:
            self.cell = DiscreteCell(genotype, ninp, nhid, dropouth, dropoutx)
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight
        with torch.no_grad():
            self.encoder.weight.uniform_(-INIT_RANGE, INIT_RANGE)
            self.decoder.bias.zero_()
        self.last_hidden: torch.Tensor | None = None
        self.drop_path_prob = 0.0  # the search loop sets it; a recurrent cell has no drop path

    @property
    def is_search(self) -> bool:
        return isinstance(self.cell, SearchCell)

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        return self.encoder.weight.new_zeros(batch_size, self.nhid)

    def forward(self, x: RNNInput | torch.Tensor, op_weights: Mapping[str, torch.Tensor] | None = None,
                edge_weights: Mapping[str, torch.Tensor] | None = None,
                hard: Mapping[str, Sequence[int]] | None = None) -> torch.Tensor:
        if edge_weights:
            raise ValueError("the recurrent cell has no edge weights (PC-DARTS edge normalisation is CNN-only)")
        inp = x if isinstance(x, RNNInput) else RNNInput(x)
        tokens = inp.tokens
        hidden = inp.hidden if inp.hidden is not None else self.init_hidden(tokens.shape[1])
        emb = embedding_dropout(self.encoder, tokens, self.dropoute, self.training)
        emb = locked_dropout(emb, self.dropouti, self.training)
        if self.is_search:
            if op_weights is None:
                raise ValueError("the search cell needs op weights")
            raw = self.cell(emb, hidden, op_weights[CELL], None if hard is None else hard.get(CELL))
        else:
            raw = self.cell(emb, hidden)
        self.last_hidden = raw
        inp.report(raw[-1])
        out = locked_dropout(raw, self.dropout, self.training)
        return self.decoder(out.reshape(-1, self.nhid))
