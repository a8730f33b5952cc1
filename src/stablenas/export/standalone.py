"""A standalone evaluation network (needs only PyTorch).

    import model                      # this file
    net = model.load()                # build() + the weights saved beside it (model.pt), eval mode
    logits = net(images)              # images: N x C x H x W
    logits, hidden = net(tokens, hidden)  # the language model: tokens T x B, hidden B x nhid

``SPEC`` holds the architecture as data (the genotype, the network and its sizes); ``build()``
turns it into an ``nn.Module`` whose parameter names match the state dict saved beside this file.
The ops follow the DARTS code (Liu et al. 2019, ``cnn/operations.py``, ``cnn/model.py``,
``rnn/model.py``) and NAS-Bench-201's (Dong & Yang 2020, ``cell_operations.py``); the image networks
return the logits only (no auxiliary tower, no drop-path), the language model no dropout: these are
the inference models. Every class is TorchScript-compatible.
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SPEC: dict = {}  # the architecture (written by the exporter)


class ReLUConvBN(nn.Sequential):
    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int = 1):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(C_out),
        )


class DilConv(nn.Sequential):
    """ReLU - depthwise (dilated) conv - pointwise conv - BN."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int, dilation: int):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel, stride=stride, padding=padding, dilation=dilation, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv blocks with dilation 1; only the first one strides."""

    def __init__(self, C_in: int, C_out: int, kernel: int, stride: int, padding: int):
        super().__init__(
            DilConv(C_in, C_in, kernel, stride, padding, 1),
            DilConv(C_in, C_out, kernel, 1, padding, 1),
        )


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` op: zeros of the (strided) input's shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two 1x1 convs, on the even and on the odd pixels."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(C_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        if x.shape[-1] % 2 or x.shape[-2] % 2:  # pad odd sizes so both branches agree in shape
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.bn(torch.cat([self.conv_1(x[:, :, 0::2, 0::2]), self.conv_2(x[:, :, 1::2, 1::2])], dim=1))


class ResNetBasicBlock(nn.Module):
    """NAS-Bench-201's stride-2 block between stages; the shortcut pools (ceil mode) then projects."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, stride=2, padding=0, ceil_mode=True),
                                        nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


OPS = {
    "none": lambda C, stride: Zero(stride),
    "max_pool_3x3": lambda C, stride: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda C, stride: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "skip_connect": lambda C, stride: Identity() if stride == 1 else FactorizedReduce(C, C),
    "sep_conv_3x3": lambda C, stride: SepConv(C, C, 3, stride, 1),
    "sep_conv_5x5": lambda C, stride: SepConv(C, C, 5, stride, 2),
    "sep_conv_7x7": lambda C, stride: SepConv(C, C, 7, stride, 3),
    "dil_conv_3x3": lambda C, stride: DilConv(C, C, 3, stride, 2, 2),
    "dil_conv_5x5": lambda C, stride: DilConv(C, C, 5, stride, 4, 2),
    "nor_conv_1x1": lambda C, stride: ReLUConvBN(C, C, 1, stride, 0),
    "nor_conv_3x3": lambda C, stride: ReLUConvBN(C, C, 3, stride, 1),
}


# --------------------------------------------------------------------------------------------
# DARTS skeleton


class Cell(nn.Module):
    """A DARTS cell: node n sums ops 2n and 2n+1 applied to earlier states; the output concatenates
    the ``concat`` states. Only edges leaving the two cell inputs stride in a reduction cell."""

    def __init__(self, pairs: list, concat: list, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool):
        super().__init__()
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self.indices: list[int] = [int(i) for _, i in pairs]
        self.concat: list[int] = [int(i) for i in concat]
        self.ops = nn.ModuleList(OPS[op](C, 2 if reduction and i < 2 else 1) for op, i in pairs)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        node = states[0]
        for k, op in enumerate(self.ops):
            h = op(states[self.indices[k]])
            if k % 2 == 0:
                node = h
            else:
                states.append(node + h)
        return torch.cat([states[i] for i in self.concat], dim=1)


def _cells(genotype: dict, C: int, layers: int, C_prev_prev: int, C_prev: int, reduction_prev: bool):
    """The DARTS cell stack: reduction cells at 1/3 and 2/3 depth, channels doubling at each."""
    cells = nn.ModuleList()
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C *= 2
        kind = "reduce" if reduction else "normal"
        concat = genotype[kind + "_concat"]
        cells.append(Cell(genotype[kind], concat, C_prev_prev, C_prev, C, reduction, reduction_prev))
        reduction_prev = reduction
        C_prev_prev, C_prev = C_prev, len(concat) * C
    return cells, C_prev


class NetworkCIFAR(nn.Module):
    """The DARTS CIFAR network: a 3x3 conv stem, the cells, global average pool, linear classifier."""

    def __init__(self, genotype: dict, C: int, layers: int, num_classes: int, in_channels: int = 3,
                 stem_multiplier: int = 3):
        super().__init__()
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False), nn.BatchNorm2d(C_stem))
        self.cells, C_final = _cells(genotype, C, layers, C_stem, C_stem, False)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_final, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(s1).flatten(1))


class NetworkImageNet(nn.Module):
    """The DARTS ImageNet (mobile setting) network: two strided stems, then the cells."""

    def __init__(self, genotype: dict, C: int, layers: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(C))
        self.cells, C_final = _cells(genotype, C, layers, C, C, True)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_final, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(self.global_pooling(s1).flatten(1))


# --------------------------------------------------------------------------------------------
# NAS-Bench-201 skeleton


class NB201Cell(nn.Module):
    """Node i sums op_{j->i}(node j) over its incoming edges; the output is the last node."""

    def __init__(self, nodes: list, C: int):
        super().__init__()
        edges = [(op, int(j), k == 0, k == len(pairs) - 1) for pairs in nodes for k, (op, j) in enumerate(pairs)]
        self.srcs: list[int] = [e[1] for e in edges]
        self.first: list[bool] = [e[2] for e in edges]
        self.last: list[bool] = [e[3] for e in edges]
        self.ops = nn.ModuleList(OPS[e[0]](C, 1) for e in edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [x]
        node = x
        for k, op in enumerate(self.ops):
            h = op(states[self.srcs[k]])
            node = h if self.first[k] else node + h
            if self.last[k]:
                states.append(node)
        return states[-1]


class NB201Network(nn.Module):
    """The NAS-Bench-201 network: stem, three stages of N cells at C, 2C, 4C channels joined by
    ResNet blocks, BN-ReLU, global average pool, linear classifier."""

    def __init__(self, nodes: list, C: int, N: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells: list[nn.Module] = []
        C_prev = C
        for stage, C_curr in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                cells.append(ResNetBasicBlock(C_prev, C_curr))
            cells.extend(NB201Cell(nodes, C_curr) for _ in range(N))
            C_prev = C_curr
        self.cells = nn.Sequential(*cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lastact(self.cells(self.stem(x)))
        return self.classifier(self.global_pooling(out).flatten(1))


# --------------------------------------------------------------------------------------------
# the DARTS recurrent cell (Penn Treebank language model)


RECURRENT_OPS = ("tanh", "relu", "sigmoid", "identity")


def activation(name: str, h: torch.Tensor) -> torch.Tensor:
    if name == "tanh":
        return torch.tanh(h)
    if name == "relu":
        return F.relu(h)
    if name == "sigmoid":
        return torch.sigmoid(h)
    return h  # identity


class RecurrentCell(nn.Module):
    """Node 0 mixes x_t and h_{t-1} by a highway gate; node i reads one earlier node s_j through its
    own map, ``[c, h] = s_j W_i``, and is ``s_j + sigmoid(c) * (f(h) - s_j)``; h_t averages the
    ``concat`` nodes."""

    def __init__(self, genotype: dict, ninp: int, nhid: int):
        super().__init__()
        self.nhid = nhid
        self.acts: list[str] = [op for op, _ in genotype["recurrent"]]
        self.preds: list[int] = [int(j) for _, j in genotype["recurrent"]]
        self.concat: list[int] = [int(j) for j in genotype["recurrent_concat"]]
        self.W0 = nn.Parameter(torch.zeros(ninp + nhid, 2 * nhid))
        self.Ws = nn.Parameter(torch.zeros(len(self.preds), nhid, 2 * nhid))

    def step(self, x: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
        ch = torch.cat([x, h_prev], dim=-1).mm(self.W0)
        states = [h_prev + torch.sigmoid(ch[:, : self.nhid]) * (torch.tanh(ch[:, self.nhid :]) - h_prev)]
        for i in range(len(self.preds)):
            s = states[self.preds[i]]
            ch = s.mm(self.Ws[i])
            states.append(s + torch.sigmoid(ch[:, : self.nhid]) * (activation(self.acts[i], ch[:, self.nhid :]) - s))
        return torch.stack([states[j] for j in self.concat]).mean(0)


class RNNModel(nn.Module):
    """Embedding, the recurrent cell over time, a decoder tied to the embedding; returns the logits
    ``(T * B, ntoken)`` of the next word and the last hidden state (to carry into the next window)."""

    def __init__(self, genotype: dict, ntoken: int, nhid: int):
        super().__init__()
        self.nhid = nhid
        self.encoder = nn.Embedding(ntoken, nhid)
        self.cell = RecurrentCell(genotype, nhid, nhid)
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.encoder(tokens)
        outputs = []
        for t in range(emb.shape[0]):
            hidden = self.cell.step(emb[t], hidden)
            outputs.append(hidden)
        return self.decoder(torch.stack(outputs).reshape(-1, self.nhid)), hidden


NETWORKS = {"cifar": NetworkCIFAR, "imagenet": NetworkImageNet, "nb201": NB201Network, "ptb": RNNModel}


def build() -> nn.Module:
    """The network ``SPEC`` describes (fresh weights: load the saved state dict into it)."""
    return NETWORKS[SPEC["network"]](SPEC["genotype"], **SPEC["sizes"])


def load(weights: str | None = None) -> nn.Module:
    """``build()`` with the state dict saved beside this file (or at ``weights``), in eval mode."""
    net = build()
    path = weights if weights is not None else Path(__file__).with_suffix(".pt")
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()
