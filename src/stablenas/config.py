"""Search configuration: a validated tree loaded from YAML presets.

Every section forbids unknown keys, and every error is reported as one line that names the key
path, what was wrong and what is allowed, so a typo in a 40-line preset does not silently run the
default. ``--set a.b=value`` overrides are applied to the raw tree *before* validation, so they
are checked exactly like the file.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, StablenasError  # ConfigError re-exported for ``from stablenas.config import``
from .plugins import load_plugins, session_plugins
from .registry import ACTIVATIONS, DISCRETIZERS, METHODS, SKELETONS, SPACES

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigModel(BaseModel):
    """The base of every settings model a user writes (search and training configs, skeleton and
    method options, study protocols): an unknown key is an error rather than an ignored typo, and so
    is a non-finite number (YAML's ``.nan``, ``.inf``), which no setting means and which would only
    surface later as a "diverged" run blaming the learning rate."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


_Options = TypeVar("_Options", bound="CommandOptions")


class CommandOptions(ConfigModel):
    """The options of one command, validated together: a field is an option (``curvature_batches``
    is ``--curvature-batches``), and :meth:`parse` raises the first problem, in field order, as one
    :class:`ConfigError` line. A validator's own message is said as is, so it names its option and
    what is allowed itself; pydantic's (a range, a choice) get the option and the value first."""

    @classmethod
    def parse(cls: type[_Options], **values: Any) -> _Options:
        try:
            return cls(**values)
        except ValidationError as e:
            raise ConfigError(_first_option_error(e)) from None


def option_flag(field: str) -> str:
    """A field of :class:`CommandOptions` as the command line spells it."""
    return "--" + field.replace("_", "-")


def _first_option_error(err: ValidationError) -> str:
    e = err.errors()[0]
    if e["type"] == "value_error":
        return str(e["ctx"]["error"])
    where = option_flag(str(e["loc"][0])) if e["loc"] else "options"
    value = e.get("input")
    shown = e["type"] != "extra_forbidden" and isinstance(value, (str, int, float))
    return f"{where}{f' {value!r}' if shown else ''}: {e['msg']}"


# Every seed's range: numpy's legacy seeding takes 0..2**32-1, and the streams derived from a seed
# (``seed * 104729 + 3`` and the like) then stay inside the 64 bits torch.manual_seed accepts.
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class _Section(ConfigModel):
    model_config = ConfigDict(validate_assignment=True)


class DataConfig(_Section):
    dataset: str = "fashion-mnist"
    root: str | None = None  # directory for user-supplied datasets (cifar10/100, svhn, idx files)
    subset: int | None = Field(None, gt=0)  # use this many training images for the search
    train_portion: float = Field(0.5, gt=0.0, lt=1.0)  # share of the subset for weights (rest: alpha)
    batch_size: int = Field(64, gt=0)  # the global batch: under torchrun each rank takes 1/N of it (README)
    eval_batch_size: int = Field(256, gt=0)
    crop_padding: int = Field(0, ge=0)
    flip: bool = False
    cutout: int = Field(0, ge=0)  # cutout length on search batches (R-DARTS regularisation), 0 = off
    cutout_prob: float = Field(1.0, ge=0.0, le=1.0)


class NetworkConfig(_Section):
    channels: int = Field(16, gt=0)
    layers: int = Field(8, gt=0)  # cells (darts skeleton) or cells per stage (nb201)
    stem_multiplier: int = Field(3, gt=0)
    partial_channels: int = Field(1, ge=1)  # PC-DARTS K: 1/K of channels through the mixed op
    node_norm: bool = False  # iDARTS node normalisation
    channels_last: bool = True  # faster convolutions on CPU, numerically the same


class ArchConfig(_Section):
    activation: str = "softmax"
    init: Literal["normal"] | float = "normal"
    init_scale: float = Field(1e-3, ge=0.0)
    edge_betas: bool = False  # PC-DARTS edge normalisation


class OptimConfig(_Section):
    epochs: int = Field(50, ge=1)
    lr: float = Field(0.025, gt=0.0)
    lr_min: float = Field(0.001, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(3e-4, ge=0.0)  # the L2 factor on the weights (R-DARTS(L2) scales it)
    grad_clip: float | None = Field(5.0, gt=0.0)
    arch_optimizer: Literal["adam", "sgd"] = "adam"
    arch_lr: float = Field(3e-4, gt=0.0)
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = Field(1e-3, ge=0.0)
    warmup_epochs: int = Field(0, ge=0)  # epochs with alpha frozen (weights only)

    @field_validator("arch_betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):  # Adam's decay rates (Kingma & Ba 2015, Alg. 1)
            raise ValueError(f"Adam's betas must each lie in [0, 1), got {list(v)}")
        return v


class SearchSection(_Section):
    update: Literal["first", "second", "single", "none"] = "first"
    # first: alternate val-step on alpha (1st order); second: unrolled (robust-darts App. A);
    # single: one loss on one batch updates weights and alpha together (Single-DARTS);
    # none: alpha untouched (random search with weight sharing samples instead)
    xi: float | None = None  # virtual step size; None = the current weight learning rate
    # how the 2nd-order mixed derivative is taken: DARTS's weight-space finite difference (eq. 13-14),
    # or exactly by double backward (slower, no kink error in ReLU networks)
    unrolled_hvp: Literal["finite-difference", "autograd"] = "finite-difference"
    steps_per_epoch: int | None = Field(None, gt=0)  # cap (smoke runs); None = one pass of the split
    val_batches: int | None = Field(None, gt=0)  # batches of the val split evaluated per epoch
    discretizer: str = "default"
    checkpoint_every: int | None = Field(None, gt=0)  # also checkpoint every N steps within an epoch


class RegularizationConfig(_Section):
    drop_path_max: float = Field(0.0, ge=0.0, lt=1.0)  # ScheduledDropPath 0 -> max over the search


class EvaluationConfig(_Section):
    # per-epoch ground truth of the derived architecture (see stablenas.evaluate.lookup): the S5 table
    # (space s5) and the NAS-Bench-201 file (space nb201); nothing is trained for it
    lookup: bool = True
    nb201_file: str | None = None  # NAS-Bench-201-v1_0-e61699.pth or -v1_1-096897.pth ($STABLENAS_NB201_FILE)
    nb201_hp: Literal["200", "12"] = "200"  # the benchmark's training schedule (epochs); papers quote 200


class MethodEntry(ConfigModel):
    """One method: its registered name plus its own options (validated by the method)."""

    model_config = ConfigDict(extra="allow")
    name: str


class SearchConfig(_Section):
    name: str = "darts"
    description: str = ""
    seed: Seed = 2
    device: str = "auto"
    threads: int | None = Field(None, gt=0)
    deterministic: bool = True
    space: str = "darts"
    data: DataConfig = DataConfig()
    network: NetworkConfig = NetworkConfig()
    arch: ArchConfig = ArchConfig()
    optim: OptimConfig = OptimConfig()
    search: SearchSection = SearchSection()
    regularization: RegularizationConfig = RegularizationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    methods: list[MethodEntry] = []
    plugins: list[str] = []  # user code to import first (see stablenas.plugins); stored resolved
    model: dict[str, Any] = {}  # options of the space's skeleton (its Options model validates them)

    @field_validator("space")
    @classmethod
    def _space_known(cls, v: str) -> str:
        if v not in SPACES:
            raise ValueError(SPACES.unknown_message(v))
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> SearchConfig:
        skeleton = SKELETONS[SPACES[self.space].skeleton]
        skeleton.check_data(self)  # image skeletons: a registered dataset name (aliases included)
        skeleton.parse_options(self.model)
        if self.arch.activation not in ACTIVATIONS:
            raise ValueError(f"arch.activation: {ACTIVATIONS.unknown_message(self.arch.activation)}")
        if self.network.channels % self.network.partial_channels:
            raise ValueError(f"network.channels ({self.network.channels}) must be divisible by "
                             f"network.partial_channels ({self.network.partial_channels})")
        if self.optim.lr_min > self.optim.lr:
            raise ValueError(f"optim.lr_min ({self.optim.lr_min}) exceeds optim.lr ({self.optim.lr}): the cosine "
                             "schedule anneals from optim.lr down to optim.lr_min")
        if self.optim.warmup_epochs > self.optim.epochs:
            raise ValueError(f"optim.warmup_epochs ({self.optim.warmup_epochs}) exceeds optim.epochs "
                             f"({self.optim.epochs})")
        if self.network.partial_channels > 1:
            skeleton.require("partial_channels", "network.partial_channels > 1")
        if self.network.node_norm:
            skeleton.require("node_norm", "network.node_norm")
        if self.arch.edge_betas:
            skeleton.require("edge_betas", "arch.edge_betas")
        for m in self.methods:
            if m.name not in METHODS:
                if m.name.strip().lower() in ("darts", "darts-1st", "darts-2nd"):
                    raise ValueError(f"methods: {m.name!r} is not a method: DARTS is the default update rule "
                                     "(search.update: first or second) that every method hooks into; leave "
                                     "methods empty for plain DARTS")
                raise ValueError(f"methods: {METHODS.unknown_message(m.name)}")
            cls = METHODS[m.name]
            cls.validate(self, cls.parse_options(m.model_extra or {}))  # declared requirements
        _check_device(self.device)
        n = TRAIN_SIZES.get(self.data.dataset)
        if n is not None:
            check_data_sizes(self.data, n)
        if self.search.discretizer not in DISCRETIZERS:
            raise ValueError(f"search.discretizer: {DISCRETIZERS.unknown_message(self.search.discretizer)}")
        return self

    def to_dict(self) -> dict:
        d = self.model_dump(mode="json")
        d["methods"] = [{"name": m.name, **(m.model_extra or {})} for m in self.methods]
        for key in ("plugins", "model"):  # empty: configs read (and --resume) as before
            if not d[key]:
                del d[key]
        return d

    def to_yaml(self, effective: bool = False) -> str:
        """The config as YAML; ``effective``: every method option and the skeleton's ``model:``
        options with their defaults filled in (``--print-config``), where the run directory's
        config.yaml keeps what was given."""
        d = self.to_dict()
        if effective:
            d["methods"] = [{"name": m.name, **METHODS[m.name].parse_options(m.model_extra or {}).model_dump(
                mode="json")} for m in self.methods]
            model = SKELETONS[SPACES[self.space].skeleton].parse_options(self.model).model_dump(mode="json")
            if model:
                d["model"] = model
        return yaml.safe_dump(d, sort_keys=False)


# training-split sizes of the built-in datasets (stablenas.data.datasets), known without loading them
TRAIN_SIZES: dict[str, int] = {"fashion-mnist": 60000, "mnist": 60000, "digits": 1437, "cifar10": 50000,
                               "cifar100": 50000, "svhn": 73257}


def _check_device(name: str) -> None:
    """``device``: auto, cpu, cuda, cuda:N or mps, and present on this machine."""
    import re

    if name == "auto":
        return
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", name):
        raise ValueError(f"device: unknown {name!r}; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} requested but CUDA is not available here; use cpu or auto")
        idx = int(name.split(":")[1]) if ":" in name else 0
        if idx >= torch.cuda.device_count():
            raise ValueError(f"device: {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if name == "mps":
        import torch

        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device: 'mps' requested but MPS is not available here; use cpu or auto")


def check_data_sizes(d: DataConfig, n: int) -> None:
    """data.subset / data.batch_size against a training set of ``n`` images: at config load where
    the size is known without loading (the built-in datasets), and again once the files are loaded
    (a data.root of the user's may hold any number), still before anything is written."""
    if d.subset is not None and d.subset > n:
        raise ConfigError(f"data.subset: {d.subset} exceeds the {n} training images of {d.dataset}; use 2..{n} "
                          "or set data.subset: null (all of them)")
    total = d.subset if d.subset is not None else n
    n_train = int(d.train_portion * total)
    if d.batch_size > n_train:
        raise ConfigError(f"data.batch_size: {d.batch_size} exceeds the {n_train} images of the weight split "
                          f"({d.dataset}, {total} images x data.train_portion {d.train_portion}); lower it")


# --------------------------------------------------------------------------------------------
# loading


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping that gives a key twice (PyYAML would keep the last one without a word)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (merge keys ``<<`` still
    override, as YAML defines)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(None, None, f"key {key!r} appears twice (lines {seen[key]} and "
                                                        f"{line}); keep one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """YAML text as the safe loader reads it, a key given twice refused (:class:`DuplicateKeyError`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds no Python objects


def read_yaml(path: str | Path, what: str = "config", error: type[StablenasError] = ConfigError) -> dict | None:
    """The one reader of the YAML files users hand over (configs, a run's config.yaml, study
    protocols): a mapping, or None for an empty file. Unreadable bytes, invalid YAML, a key given
    twice and a top level that is not a mapping are ``error`` with one line naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or ("not UTF-8 text" if isinstance(e, UnicodeDecodeError)
                                               else type(e).__name__)
        raise error(f"{path}: cannot read the {what} ({why})") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if raw is not None and not isinstance(raw, dict):
        raise error(f"{path}: the {what} must be a mapping of keys, not a {type(raw).__name__}")
    return raw


def format_validation_error(err: ValidationError, model: type[BaseModel], prefix: str = "invalid config",
                            noun: str = "key") -> str:
    """The one formatter of pydantic errors (search and training configs, method options): one
    line, ``<prefix>: <key path>: <what is wrong>``; an unknown key lists the valid keys of its
    section (``noun="option"``: ``unknown option 'x'; valid options: ...``)."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = _section_for(model, e["loc"][:-1])
            valid = (", ".join(parent.model_fields) or "(none)") if parent is not None else "?"
            lines.append(f"unknown option {loc!r}; valid options: {valid}" if noun == "option"
                         else f"{loc}: unknown key; valid keys here: {valid}")
        else:
            lines.append(f"{loc}: {msg}" if loc else msg)
    return f"{prefix}: " + "; ".join(lines)


def _format_error(err: ValidationError, model: type[BaseModel]) -> str:
    return format_validation_error(err, model)


def _section_for(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    if not loc:
        return model
    cur: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = cur.model_fields.get(part) if isinstance(cur, type) and issubclass(cur, BaseModel) else None
        if field is None:
            return None
        cur = field.annotation
        if isinstance(cur, type) and issubclass(cur, BaseModel):
            continue
        return None
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def apply_overrides(raw: dict, overrides: list[str] | None, example: str = "optim.epochs=10") -> dict:
    """The one ``--set`` parser of every command: ``a.b=value`` pairs (dotted keys walk into
    sections and list indices; flat configs use plain keys); values parse as YAML (numbers,
    bools, lists, null), and text that is not YAML stays a string."""
    raw = copy.deepcopy(raw)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. {example}")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key segment")
        try:
            parsed = load_yaml(value)
        except DuplicateKeyError as e:
            raise ConfigError(f"--set {item!r}: {e}") from None
        except yaml.YAMLError:
            parsed = value
        node = raw
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not p.isdigit() or int(p) >= len(node):
                    where = ".".join(parts[:i]) or "the config"
                    raise ConfigError(f"--set {item!r}: {where} is a list of {len(node)} entries; use an index "
                                      f"0..{len(node) - 1}" if node else f"--set {item!r}: {where} is empty")
                node = node[int(p)]
                continue
            nxt = node.get(p)
            if not isinstance(nxt, (dict, list)):
                nxt = {}
                node[p] = nxt
            node = nxt
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                where = ".".join(parts[:-1])
                raise ConfigError(f"--set {item!r}: {where} is a list of {len(node)} entries; use an index "
                                  f"0..{len(node) - 1}" if node else f"--set {item!r}: {where} is empty")
            node[int(last)] = parsed
        else:
            node[last] = parsed
    return raw


def preset_config(model: type[ConfigModel], presets: dict[str, dict[str, Any]], preset: str | dict | None,
                  overrides: list[str] | dict | None, fields: dict[str, Any], *, unknown: Callable[[str], str],
                  prefix: str,
                  inherit: dict | None = None) -> Any:
    """A validated flat run config (the training configs): a preset name (or dict), then ``key=value``
    strings (values parsed as YAML, like ``--set``) or a dict, then the keyword ``fields`` that are not
    None; ``inherit`` fills only keys none of them set. ``unknown``: the error message for a preset
    name not in ``presets``; ``prefix``: that of a validation error."""
    if preset is None:
        raw: dict[str, Any] = {}
    elif isinstance(preset, dict):
        raw = dict(preset)
    elif preset in presets:
        raw = dict(presets[preset])
    else:
        raise ConfigError(unknown(preset))
    if isinstance(overrides, dict):
        raw.update(overrides)
    else:
        raw = apply_overrides(raw, overrides, example="epochs=10")
    given = {k: v for k, v in fields.items() if v is not None}
    explicit = set(raw) | set(given)
    raw.update(given)
    for k, v in (inherit or {}).items():  # lowest priority: only where the preset and overrides say nothing
        if v is not None and k not in explicit:
            raw[k] = v
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, prefix)) from None


def config_from_dict(raw: dict, overrides: list[str] | None = None, *,
                     base: str | Path | None = None) -> SearchConfig:
    """Validate a raw config tree (after ``--set`` overrides). Its ``plugins`` (files relative to
    ``base``, the config file's folder) and those given with ``stablenas --plugin`` are imported
    first, so their methods, spaces, ops and datasets validate like built-ins, and are recorded
    resolved in the config (a run's saved config.yaml loads them again)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config: the top level must be a mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    resolved = load_plugins(raw.get("plugins") or [], base)
    resolved += [p for p in session_plugins() if p not in resolved]
    if resolved or "plugins" in raw:
        raw["plugins"] = resolved
    try:
        return SearchConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, SearchConfig)) from None


def resolve_preset(name_or_path: str | Path) -> Path:
    """A config file, else the preset of that name. A directory is never a config, so a bare name
    that is a directory here (``search quickstart --out quickstart`` made one) and a preset is the
    preset; ``./quickstart`` names the directory."""
    p = Path(name_or_path)
    cand = PRESET_DIR / f"{name_or_path}.yaml"
    if p.is_dir():
        if isinstance(name_or_path, str) and "/" not in name_or_path and cand.exists():
            return cand
        raise ConfigError(f"config {str(name_or_path)!r} is a directory, not a YAML file (to resume a run "
                          f"give its config: {p / 'config.yaml'})")
    if p.exists():
        return p
    if cand.exists():
        return cand
    raise ConfigError(f"no config file {str(name_or_path)!r} and no preset of that name; "
                      f"presets: {', '.join(list_presets())}")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> SearchConfig:
    """A YAML file path or a preset name (``darts``, ``sdarts-adv``, ...), plus ``--set`` overrides."""
    path = resolve_preset(name_or_path)
    raw = read_yaml(path)
    if raw is None:  # an empty file must not silently run the defaults (a 50-epoch CIFAR search)
        raise ConfigError(f"{path}: the config file is empty; start from a preset (`stablenas presets`)")
    try:
        return config_from_dict(raw, overrides, base=path.parent)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
