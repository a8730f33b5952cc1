"""The ``Skeleton`` plug-in: everything that depends on the macro network a space uses.

A search space is data (:class:`~stablenas.spaces.catalog.SearchSpace`: nodes, edges, candidate ops
per edge) plus the *name* of a skeleton. The skeleton is the code: the supernet around the cells,
the evaluation networks a found cell is trained in, what data it consumes and which metric it
reports, and how its genotypes read, derive (discretise), serialise, print, draw and count. Code
outside a skeleton never branches on a skeleton's or a space's name; it asks the skeleton:

    sk = skeleton_of(space)            # or skeleton_of(genotype)
    net = sk.build_supernet(space, C=16, layers=8, num_classes=10)
    g = sk.derive(space, op_weights, edge_weights)

A new skeleton (the recurrent PTB one, say) is a subclass registered with ``@register_skeleton``
plus spaces that name it; nothing else in the package changes. The interface, in the order a run
uses it:

- space: ``check_space(space)``, ``num_architectures(space)``;
- capabilities: ``capabilities``, the names the config check and methods' ``validate(cfg)`` ask
  for with ``require`` (a one-line refusal): ``"partial_channels"``, ``"node_norm"``,
  ``"edge_betas"``, ``"aux_skip"``, ``"reduction_cells"``; ``"data_parallel"``: the search data
  streams split across ranks (``TensorLoader.set_shard``), checked before ranks start;
  ``"op_modules"``: each candidate op on an edge is a module with weights of its own (OLES freezes
  them one by one); ``"several_cells"``: several cells of a type share alpha, each with op weights of
  its own (Lambda-DARTS aligns their gradients); ``"op_costs"``: the evaluation networks are built
  from the registered op modules, so each op's cost counts on its own (budget); ``"none_slots"``:
  a genotype may keep a connection with the zero op (FairDARTS's threshold rule fills the slots
  no op passes with it); ``"perturbation_selection"``: DARTS-PT's selection is defined for the
  cells (Wang et al. 2021: ``sota/cnn`` and ``nasbench201`` ``projection.py``); ``data_kind`` and
  ``metric``;
- data: ``search_data(cfg, device, dataset=None) -> SearchData`` (the two search streams and the
  evaluation loader; the image default splits a training set the DARTS way);
- supernet: ``build_supernet(space, **sizes)``, ``supernet_from_config(space, cfg, data)``,
  ``build_reference(space, **sizes)`` (the plain oracle, if the skeleton has one);
- loss: ``loss(search, x, y, mix, params)`` (stateful skeletons: ``search.stream`` names the
  stream, ``"train"``, ``"val"`` or ``"eval"``, of the current phase); ``epoch_metrics``,
  ``format_metric`` and ``metric_label`` (how epoch lines and reports show ``metric``);
- descriptions: ``describe_network(cfg)`` (dry runs, plans, reports) and ``report_rows(cfg)``
  (the regularisation settings a report lists);
- genotypes: ``owns``/``claims`` (which genotypes are this skeleton's), ``genotype_from_dict``,
  ``parse_genotype_text`` (a text form of its own, DARTS's Python one), ``genotype_to_dict``,
  ``genotype_str``, ``genotype_text`` (report), ``cell_types``, ``cell_pairs``, ``cell_graph``
  (drawing and cell statistics), ``derive`` (the default discretisation), ``genotype_of(space, hard)``
  and ``sample(space, generator)`` (op index per edge, -1 = not kept), ``genotype_edges``; the
  discrete structure: ``keeps_every_edge``, ``keep_per_node``, ``zero_is_choice``, ``zero_genotype``
  (every kept connection `none`), ``has_param_free_share`` (whether reports, ``show`` and studies
  give the share);
- evaluation: ``eval_networks``, ``resolve_eval_network(name)`` (for ``train``/``info``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ValidationError

from ..config import ConfigModel
from ..errors import ConfigError
from ..registry import DEFAULT_SKELETON, METHODS, SKELETONS, SPACES

if TYPE_CHECKING:
    from torch import nn

    from ..genotype import Genotype
    from ..spaces.catalog import SearchSpace
    from ..supernet.mix import Mix



@dataclass
class SearchData:
    """What a search consumes: the weight stream (a resumable loader with ``set_epoch``,
    ``state_dict``), the endless alpha stream, the loader of the per-epoch validation pass, and
    the sizes the supernet needs. A skeleton's ``search_data`` builds it; ``Search`` and the
    bench accept one ready-made (``Search(cfg, data=...)``)."""

    train_loader: Any
    val_stream: Any
    val_eval_loader: Any
    num_classes: int
    in_channels: int
    n_train: int = 0  # size of the weight split (for the batch-size error message)
    dataset: Any = None


@dataclass(frozen=True)
class CellGraph:
    """A discrete cell as a graph: ``n_inputs`` input nodes, then per intermediate node its
    ``(source, op)`` inputs, and the nodes that form the output (``concat``: the output is a
    separate node joining them, as in DARTS; else the single listed node is the output)."""

    n_inputs: int
    nodes: tuple[tuple[tuple[int, str], ...], ...]
    outputs: tuple[int, ...]
    concat: bool = True
    input_names: tuple[str, ...] = ()


class SkeletonOptions(ConfigModel):
    """The config's ``model:`` section, validated by the space's skeleton (none for darts/nb201)."""


class Skeleton:
    """Base class; subclasses set ``name`` and override what differs. See the module docstring."""

    Options: ClassVar[type[BaseModel]] = SkeletonOptions

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    data_kind: ClassVar[str] = "image"  # "image": the datasets registry; others bring their own data
    metric: ClassVar[str] = "acc"  # the quality number epochs report (accuracy; perplexity for LMs)
    metric_label: ClassVar[str] = "accuracy"  # its name in reports and plots
    eval_networks: ClassVar[tuple[str, ...]] = ()  # evaluation networks, the first is the default
    # discretisation keeps every edge (one op each, `none` a choice: NB201) rather than the
    # ``inputs_per_node`` strongest edges per node (DARTS)
    keeps_every_edge: ClassVar[bool] = False
    # a cell's parameter-free share (skip, pooling, none, noise against ops with weights: the
    # collapse signal, robust-darts Sec. 3) means something: its ops differ in carrying weights
    has_param_free_share: ClassVar[bool] = True

    def parse_options(self, raw: dict) -> BaseModel:
        """The config's ``model:`` section as this skeleton's ``Options`` (one-line errors)."""
        from ..config import format_validation_error

        try:
            return self.Options.model_validate(raw or {})
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, self.Options, f"model ({self.name} skeleton)",
                                                      noun="option")) from None

    def check_data(self, cfg: Any) -> None:
        """Config check of what the search consumes; image skeletons: a registered dataset."""
        from ..registry import DATASETS

        if cfg.data.dataset not in DATASETS:
            raise ConfigError(f"data.dataset: {DATASETS.unknown_message(cfg.data.dataset)}")

    def supports(self, capability: str) -> bool:
        return capability in self.capabilities

    def require(self, capability: str, what: str, instead: str = "") -> None:
        """One clear line when a config asks for something this skeleton cannot do, ending with
        ``instead`` (what to do here) or else the spaces whose skeleton can."""
        if self.supports(capability):
            return
        if not instead:
            spaces = [n for n, sp in SPACES.items() if capability in SKELETONS[sp.skeleton].capabilities]
            instead = f"spaces with it: {', '.join(spaces)}" if spaces else ""
        raise ConfigError(f"{what} needs {capability.replace('_', ' ')}, which the {self.name} skeleton does not "
                          f"have (it supports: {', '.join(sorted(self.capabilities)) or 'none'})"
                          + (f"; {instead}" if instead else ""))

    # -- spaces ------------------------------------------------------------------------------
    def check_space(self, space: SearchSpace) -> None:
        """Raise ``ValueError`` if ``space`` cannot be built by this skeleton."""

    def num_architectures(self, space: SearchSpace) -> int:
        """Size of the discrete space under this skeleton's discretisation."""
        raise NotImplementedError

    # -- data ---------------------------------------------------------------------------------
    def search_data(self, cfg: Any, device: torch.device, dataset: Any = None) -> SearchData:
        """The search's streams; image skeletons split a training set (``data.dataset``)."""
        from ..config import check_data_sizes
        from ..data import Augment, InfiniteLoader, TensorLoader, load_dataset, search_split

        d = cfg.data
        ds = dataset if dataset is not None else load_dataset(d.dataset, "train", d.root)
        check_data_sizes(d, len(ds))  # a data.root of the user's holds any number of images
        train_idx, val_idx = search_split(len(ds), d.train_portion, d.subset, cfg.seed)
        augment = Augment(crop_padding=d.crop_padding, flip=d.flip, cutout=d.cutout, cutout_prob=d.cutout_prob)
        cl = cfg.network.channels_last
        train = TensorLoader(ds, train_idx, d.batch_size, shuffle=True, drop_last=True, augment=augment,
                             device=device, seed=cfg.seed * 1000 + 1, channels_last=cl)
        val = InfiniteLoader(TensorLoader(ds, val_idx, d.batch_size, shuffle=True, drop_last=True, augment=None,
                                          device=device, seed=cfg.seed * 1000 + 2, channels_last=cl))
        val_eval = TensorLoader(ds, val_idx, d.eval_batch_size, shuffle=False, drop_last=False, augment=None,
                                device=device, seed=cfg.seed * 1000 + 3, channels_last=cl)
        return SearchData(train, val, val_eval, ds.num_classes, int(ds.x.shape[1]), len(train_idx), ds)

    def fixed_val_loader(self, search: Any, batch_size: int, seed: int) -> Any:
        """A loader over the validation half with its own seed (curvature measurements draw the
        same fixed batches from it every time; see ``Search.fixed_val_batches``)."""
        from ..data import TensorLoader

        return TensorLoader(search.data.dataset, search.data.val_eval_loader.indices, batch_size, shuffle=True,
                            drop_last=True, augment=None, device=search.device, seed=seed,
                            channels_last=search.cfg.network.channels_last)

    # -- supernet -----------------------------------------------------------------------------
    def build_supernet(self, space: SearchSpace, **sizes: Any) -> nn.Module:
        raise NotImplementedError

    def build_reference(self, space: SearchSpace, **sizes: Any) -> nn.Module:
        raise NotImplementedError(f"the {self.name} skeleton has no plain reference supernet")

    def supernet_from_config(self, space: SearchSpace, cfg: Any, data: SearchData) -> nn.Module:
        """The configured supernet, with the build options the config's methods declare
        (``Method.supernet_options``, e.g. DARTS-'s auxiliary skip modules)."""
        n = cfg.network
        extra: dict[str, Any] = {}
        for m in cfg.methods:
            extra.update(METHODS[m.name].supernet_options)
        return self.build_supernet(space, C=n.channels, layers=n.layers, num_classes=data.num_classes,
                                   in_channels=data.in_channels, stem_multiplier=n.stem_multiplier,
                                   partial_k=n.partial_channels, node_norm=n.node_norm, **extra)

    # -- loss and metrics ---------------------------------------------------------------------
    def logits(self, search: Any, x: torch.Tensor, mix: Mix, params: dict | None) -> torch.Tensor:
        return search.forward(x, mix, params)

    def loss(self, search: Any, x: torch.Tensor, y: torch.Tensor, mix: Mix,
             params: dict | None = None) -> torch.Tensor:
        return search.criterion(self.logits(search, x, mix, params), y)

    def weight_loss(self, search: Any, x: torch.Tensor, y: torch.Tensor, mix: Mix) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight step's loss (to backpropagate; a skeleton may add regularisers such as an
        RNN's activation penalties) and its (loss sum, correct, count) for the epoch record."""
        logits = search.forward(x, mix)
        loss = search.criterion(logits, y)
        with torch.no_grad():
            sums = torch.stack([loss.detach() * y.shape[0], (logits.argmax(1) == y).sum().to(loss.dtype),
                                torch.tensor(float(y.shape[0]), device=loss.device)])
        return loss, sums

    def weight_lr_scale(self, search: Any, batch: Any) -> float:
        """Factor on the weight learning rate for this step (1: none)."""
        return 1.0

    def eval_sums(self, search: Any, x: torch.Tensor, y: torch.Tensor, mix: Mix) -> torch.Tensor:
        """(loss sum, correct, count) of one evaluation batch, as one tensor (no host sync)."""
        logits = search.forward(x, mix)
        return torch.stack([torch.nn.functional.cross_entropy(logits, y, reduction="sum"),
                            (logits.argmax(1) == y).sum().float(),
                            torch.tensor(float(y.shape[0]), device=logits.device)])

    def epoch_metrics(self, prefix: str, loss: float, acc: float) -> dict:
        """The numbers an epoch record carries for a split (``prefix``: train or val)."""
        return {f"{prefix}_loss": loss, f"{prefix}_acc": acc}

    def format_metric(self, value: float) -> str:
        """``metric``'s value as epoch lines and reports print it."""
        return f"{value:.4f}"

    # -- descriptions (dry runs, reports) ------------------------------------------------------
    def describe_network(self, cfg: Mapping) -> str:
        """The searched network in a few words, from a config as a dict (``config.yaml``)."""
        n = cfg.get("network") or {}
        return f"{n.get('layers')} cells x {n.get('channels')} ch"

    def report_rows(self, cfg: Mapping) -> list[tuple[str, Any]]:
        """The regularisation settings of this skeleton's search that a report lists."""
        return [("DropPath max", (cfg.get("regularization") or {}).get("drop_path_max")),
                ("cutout", (cfg.get("data") or {}).get("cutout"))]

    # -- genotypes ----------------------------------------------------------------------------
    def owns(self, genotype: Genotype) -> bool:
        """Whether a genotype whose space is not registered is this skeleton's."""
        return False

    def claims(self, d: Mapping) -> bool:
        """Whether a genotype dict whose space is not registered is this skeleton's."""
        return False

    def parse_genotype_text(self, text: str, space: str) -> dict | None:
        """A genotype dict from a text form of this skeleton's own (not JSON), else None (the text is
        not in that form). ``space``: the space a form that names none belongs to."""
        return None

    def genotype_from_dict(self, d: Mapping) -> Genotype:
        raise NotImplementedError

    def genotype_to_dict(self, genotype: Genotype) -> dict:
        raise NotImplementedError

    def genotype_str(self, genotype: Genotype) -> str:
        raise NotImplementedError

    def genotype_text(self, genotype: Genotype) -> str:
        """Several lines for the report: a human view, then the JSON ``stablenas train`` reads."""
        return f"{self.genotype_str(genotype)}\n\n{genotype.to_json()}"

    def validate_genotype(self, genotype: Genotype) -> None:
        pass

    def cell_types(self, genotype: Genotype) -> list[str]:
        raise NotImplementedError

    def cell_pairs(self, genotype: Genotype, cell_type: str) -> tuple[tuple[str, int], ...]:
        """(op, input) per kept connection of a cell, in genotype order."""
        raise NotImplementedError

    def cell_graph(self, genotype: Genotype, cell_type: str) -> CellGraph:
        raise NotImplementedError

    def keep_per_node(self, space: SearchSpace, node: int) -> int:
        """How many incoming edges node ``node`` keeps after discretisation."""
        n = len(space.node_edges(node))
        return n if self.keeps_every_edge else min(space.inputs_per_node, n)

    def zero_is_choice(self, space: SearchSpace) -> bool:
        """Whether a zero op (``none``) is a legitimate choice on a kept edge."""
        return self.keeps_every_edge

    def derive(self, space: SearchSpace, op_weights: Mapping[str, torch.Tensor],
               edge_weights: Mapping[str, torch.Tensor] | None = None) -> Genotype:
        """The default value-based discretisation of the skeleton."""
        raise NotImplementedError

    def genotype_of(self, space: SearchSpace, hard: Mapping[str, list[int]],
                    fallback: Genotype | None = None,
                    outputs: Mapping[str, tuple[int, ...]] | None = None) -> Genotype:
        """The genotype of an op-index-per-edge choice (-1 = edge not kept), or per node its
        (edge, op index) pairs in the order the genotype lists them; cell types missing from
        ``hard`` are taken from ``fallback``. ``outputs``: per cell type the nodes a cell that
        joins several into its output joins (default: every intermediate node)."""
        raise NotImplementedError

    def zero_genotype(self, space: SearchSpace) -> Genotype:
        """The genotype with `none` on every kept connection: the network around the cells, whose
        cost no alpha changes (the budget's fixed part)."""
        raise NotImplementedError(f"the {self.name} skeleton has no all-`none` genotype")

    def genotype_edges(self, space: SearchSpace, genotype: Genotype, cell_type: str) -> list[tuple[int, str]]:
        """(edge index, op) of every connection the genotype keeps in ``cell_type``."""
        raise NotImplementedError

    def sample(self, space: SearchSpace, generator: torch.Generator | None = None) -> dict[str, list[int]]:
        """A uniformly random discrete architecture as an op index per edge (-1 = not kept):
        ``keep_per_node`` distinct incoming edges per node, on each an op (zero ops only where
        ``zero_is_choice``)."""
        from ..registry import OPS

        allow_zero = self.zero_is_choice(space)
        out: dict[str, list[int]] = {}
        for ct in space.cell_types:
            hard = [-1] * space.n_edges
            for node in range(space.n_nodes):
                edges = list(space.node_edges(node))
                if self.keeps_every_edge:
                    keep = edges
                else:
                    perm = torch.randperm(len(edges), generator=generator)[:self.keep_per_node(space, node)]
                    keep = [edges[i] for i in sorted(perm.tolist())]
                for e in keep:
                    ops = space.edge_ops[ct][e]
                    cands = [i for i, name in enumerate(ops) if allow_zero or not OPS[name].is_zero]
                    cands = cands or list(range(len(ops)))
                    hard[e] = cands[int(torch.randint(len(cands), (1,), generator=generator))]
            out[ct] = hard
        return out

    # -- evaluation networks (train / info) ------------------------------------------------------
    def train_command(self, genotype: Genotype, out: Any, *, preset: str | None, overrides: list[str] | None,
                      fields: dict[str, Any], resume: bool, progress: bool | None) -> tuple[dict, str] | None:
        """``stablenas train`` with this skeleton's own protocol: (result, summary line), or None to
        use the image-classification trainer (:mod:`stablenas.evaluate.train`)."""
        return None

    def info_lines(self, genotype: Genotype, name: str, fields: dict[str, Any]) -> list[str] | None:
        """``stablenas info`` lines for a genotype of this skeleton, or None for the image networks."""
        return None

    def resolve_eval_network(self, network: str | None) -> str:
        """The evaluation network to build for ``network`` (``None``/``"auto"``: the default)."""
        if network in (None, "auto"):
            return self.eval_networks[0]
        if network not in self.eval_networks:
            raise ConfigError(f"network {network!r} does not fit a {self.name}-skeleton genotype; "
                              f"choose {', '.join(self.eval_networks)}")
        return network

    def __repr__(self) -> str:
        return f"<skeleton {self.name}>"


def register_skeleton(cls: type[Skeleton]) -> type[Skeleton]:
    """Class decorator: register one instance of the skeleton under ``cls.name``."""
    SKELETONS.register(cls())
    return cls


def get_skeleton(name: str) -> Skeleton:
    return SKELETONS[name]


def skeleton_of(obj: Any) -> Skeleton:
    """The skeleton of a space, a space name, a genotype or a genotype dict."""
    from ..genotype import genotype_skeleton
    from ..spaces.catalog import SearchSpace

    if isinstance(obj, SearchSpace):
        return SKELETONS[obj.skeleton]
    if isinstance(obj, str):
        return SKELETONS[SPACES[obj].skeleton]
    return genotype_skeleton(obj)


__all__ = ["CellGraph", "DEFAULT_SKELETON", "SearchData", "Skeleton", "get_skeleton", "register_skeleton",
           "skeleton_of"]
