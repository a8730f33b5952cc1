"""Export an evaluation network as a file that runs without stablenas.

Three formats, each checked against the stablenas network (same weights, eval mode) on a random
batch before it is moved into place, so a file that exists is a file that matched:

* ``pytorch`` -- ``model.py``, plain PyTorch source generated from :mod:`.standalone` with the
  genotype written in as data, and ``model.pt`` beside it, the state dict (parameter names as in
  stablenas). ``model.load()`` returns the network with the weights.
* ``torchscript`` -- the standalone module compiled by ``torch.jit.script`` (any input size).
* ``onnx`` -- ``torch.onnx.export`` of the stablenas network (batch dimension dynamic), checked
  with onnxruntime; needs ``pip install 'stablenas[export]'``.

The networks are the skeletons' evaluation networks (DARTS CIFAR and ImageNet:
:mod:`stablenas.skeletons.darts.networks`; :mod:`stablenas.skeletons.nb201.networks`) without the
auxiliary tower, which only training uses, and the DARTS recurrent language model of
:mod:`stablenas.skeletons.rnn.model` (tokens and hidden state in, logits and the last hidden state out).
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import pprint
import sys
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ExportError
from ..genotype import Genotype
from ..skeletons.nb201.genotype import parse_nb201
from . import standalone

__all__ = ["FORMATS", "Exported", "ExportError", "build_network", "export_network"]

FORMATS = ("pytorch", "torchscript", "onnx")
TOLERANCE = {"pytorch": 1e-6, "torchscript": 1e-6, "onnx": 1e-5}
SIZE_KEYS = ("C", "layers", "num_classes", "in_channels", "stem_multiplier")


@dataclass(frozen=True)
class NetworkKind:
    """What export needs to know of an evaluation network, looked up by the network's name as
    ``EVAL_NETWORKS`` is; the code asks these properties, never the name."""

    title: str
    side: int  # the default input: image side, or the language model's sequence length
    language_model: bool = False  # tokens and a carried hidden state in (the recurrent model)
    arch_string: bool = False  # the genotype is an NB201 arch string; ``layers`` is the constructor's ``N``
    auxiliary: bool = True  # the constructor takes ``auxiliary`` (export turns the tower off)


KINDS = {"cifar": NetworkKind("DARTS CIFAR network", 32),
         "imagenet": NetworkKind("DARTS ImageNet (mobile setting) network", 224),
         "nb201": NetworkKind("NAS-Bench-201 network", 32, arch_string=True, auxiliary=False),
         "ptb": NetworkKind("DARTS recurrent language model", 35, language_model=True, auxiliary=False)}


@dataclass(frozen=True)
class Exported:
    """What :func:`export_network` wrote and how closely it reproduces the stablenas network."""

    files: tuple[Path, ...]
    network: str
    sizes: dict
    input_shape: tuple[int, ...]
    max_abs_diff: float
    trained: bool  # the weights of a training run (else drawn with the seed)


def build_network(genotype: Genotype | str | Path, network: str = "auto", **sizes: Any) -> nn.Module:
    """The evaluation network of ``genotype`` (a Genotype, a genotype.json, a run directory, an NB201
    arch string or a published name): ``network`` is ``"auto"`` (the skeleton's default), ``"cifar"``,
    ``"imagenet"``, ``"nb201"`` or, for a recurrent genotype, ``"ptb"``; ``sizes`` go to its constructor
    (``C``, ``layers``, ``num_classes``, ``auxiliary``, ``in_channels``; the language model: ``ntoken``,
    ``nhid``, dropouts). ``forward`` returns ``(logits, logits_aux)``; the language model's, the logits."""
    from ..evaluate.train import resolve_genotype
    from ..networks.evaluation import build_eval_network

    g = resolve_genotype(genotype)
    name = g.skeleton.resolve_eval_network(network)
    if name in KINDS and KINDS[name].language_model:
        from ..data.ptb import PTB_VOCAB
        from ..skeletons.rnn.model import RNNLanguageModel
        from ..skeletons.rnn.train import RNNTrainConfig

        ntoken = sizes.pop("ntoken", PTB_VOCAB)
        nhid = sizes.pop("nhid", RNNTrainConfig.model_fields["nhid"].default)
        return RNNLanguageModel(ntoken, nhid, nhid, genotype=g, **sizes)
    return build_eval_network(g, network, **sizes)


def _network_class(name: str) -> type[nn.Module]:
    from ..skeletons.darts.networks import NetworkCIFAR, NetworkImageNet
    from ..skeletons.nb201.networks import NB201Network

    return {"cifar": NetworkCIFAR, "imagenet": NetworkImageNet, "nb201": NB201Network}[name]


def _resolve_sizes(name: str, sizes: dict) -> dict:
    """The constructor's defaults overridden by the sizes given (``layers`` is NB201's ``N``; the
    language model's ``C`` is its hidden size, ``num_classes`` its vocabulary)."""
    given = {k: v for k, v in sizes.items() if v is not None}
    unknown = sorted(set(given) - set(SIZE_KEYS))
    if unknown:
        raise ConfigError(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZE_KEYS)}")
    if KINDS[name].language_model:
        from ..data.ptb import PTB_VOCAB
        from ..skeletons.rnn.train import RNNTrainConfig

        other = sorted(set(given) - {"C", "num_classes"})
        if other:
            raise ConfigError(f"the recurrent model takes two sizes, C (--channels: its hidden size) and "
                              f"num_classes (--classes: its vocabulary), not {', '.join(other)}")
        return {"ntoken": given.get("num_classes", PTB_VOCAB),
                "nhid": given.get("C", RNNTrainConfig.model_fields["nhid"].default)}
    if KINDS[name].arch_string and "layers" in given:
        given["N"] = given.pop("layers")
    params = inspect.signature(_network_class(name)).parameters
    out = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    out.pop("auxiliary", None)
    out.update((k, v) for k, v in given.items() if k in params)  # stem_multiplier: the CIFAR network's only
    return out


def _trained_run(spec: Any) -> tuple[str, dict, dict, int] | None:
    """A finished training run directory's network, sizes, state dict and image side; else None."""
    from ..evaluate.train import CHECKPOINT, RESULT

    path = Path(str(spec)) if isinstance(spec, (str, Path)) else None
    try:
        if path is None or not (path / CHECKPOINT).is_file():
            return None
        finished = (path / RESULT).is_file()
    except OSError:  # a name too long for the file system is not a directory
        return None
    if not finished:
        raise ExportError(f"{path} is a training run that has not finished (no {RESULT}); finish it with "
                          f"`stablenas train ... --out {path} --resume`, then export it")
    from ..runs.checkpoint import load_checkpoint

    ck = load_checkpoint(path / CHECKPOINT, kind="train")
    try:
        if "cell.W0" in ck["model"]:  # the language model: the weights its perplexity was measured with
            state = ck.get("best_state") or ck["model"]  # model selection on validation
            vocab, nhid = state["encoder.weight"].shape
            return "ptb", {"C": int(nhid), "num_classes": int(vocab)}, state, int(ck["config"]["bptt"])
        state = {k: v for k, v in ck["model"].items()
                 if not k.startswith("auxiliary_head.")}  # training's tower: not part of the exported network
        result = json.loads((path / RESULT).read_text(encoding="utf-8"))
        cfg, shape, network = result["config"], result["input_shape"], result["network"]
        sizes = {"C": cfg["channels"], "layers": cfg["layers"], "in_channels": int(shape[0]),
                 "num_classes": int(state["classifier.weight"].shape[0])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ExportError(f"{path}: not a finished training run ({type(e).__name__}: {e})") from None
    if network == "cifar":
        sizes["stem_multiplier"] = cfg["stem_multiplier"]
    return network, sizes, state, int(shape[-1])


def _reference(genotype: Genotype, network: str, sizes: dict, seed: int) -> tuple[nn.Module, str, dict]:
    """The stablenas network (eval mode, no auxiliary tower, weights drawn with ``seed``)."""
    if not set(genotype.skeleton.eval_networks) & set(KINDS):
        raise ExportError(f"a {genotype.skeleton.name}-skeleton genotype cannot be exported; export takes "
                          f"DARTS, NAS-Bench-201 and recurrent (PTB) genotypes")
    name = genotype.skeleton.resolve_eval_network(network)
    full = _resolve_sizes(name, sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(genotype, name, **full, **({"auxiliary": False} if KINDS[name].auxiliary else {}))
    return model.eval(), name, full


def _spec(genotype: Genotype, model: nn.Module, name: str, sizes: dict) -> dict:
    """The architecture as the standalone file's ``SPEC`` (plain data, read by its ``build()``)."""
    known = standalone.OPS
    kind = KINDS[name]
    if kind.arch_string:
        geno: Any = [[[op, j] for op, j in pairs] for pairs in parse_nb201(genotype.arch)]
        ops = [op for pairs in geno for op, _ in pairs]
    elif kind.language_model:
        geno = {"recurrent": [[op, int(j)] for op, j in genotype.recurrent],
                "recurrent_concat": list(model.cell.concat)}
        ops, known = [op for op, _ in genotype.recurrent], standalone.RECURRENT_OPS
    else:
        geno = {}
        for cell in model.cells:  # the cell types present (a 2-layer stack has no normal cell)
            geno[cell.cell_type] = [[op, int(i)] for op, i in genotype.cell(cell.cell_type)]
            geno[cell.cell_type + "_concat"] = list(cell.concat)
        ops = [op for ct in ("normal", "reduce") for op, _ in geno.get(ct, [])]
    missing = sorted(set(ops) - set(known))
    if missing:
        raise ExportError(f"op(s) {', '.join(missing)} have no standalone form; the pytorch and torchscript "
                          f"formats take {', '.join(known)} (the onnx format takes any op)")
    spec: dict = {"network": name}
    if kind.arch_string:
        spec["arch"] = genotype.arch
    spec["genotype"] = geno
    spec["sizes"] = sizes
    return spec


def standalone_source(spec: dict, title: str) -> str:
    """The text of :mod:`.standalone` with ``SPEC`` filled in and ``title`` as its first line."""
    text = Path(standalone.__file__).read_text(encoding="utf-8")
    placeholder = "SPEC: dict = {}  # the architecture (written by the exporter)"
    first = '"""A standalone evaluation network (needs only PyTorch).'
    assert placeholder in text and text.startswith(first), "the standalone template lost its markers"
    filled = "SPEC: dict = " + pprint.pformat(spec, width=110, sort_dicts=False)
    return text.replace(first, f'"""{title}, standalone (needs only PyTorch).', 1).replace(placeholder, filled, 1)


def _import_source(path: Path):
    """Import a generated source file as a fresh module (TorchScript reads its source from the file)."""
    name = f"_stablenas_export_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def _published() -> dict:
    from ..networks.published import PUBLISHED

    return PUBLISHED


def _outputs(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _max_diff(got: Any, want: list[torch.Tensor]) -> float:
    got = _outputs(got)
    assert len(got) == len(want), "the exported model returns other outputs than the network"
    return max(float((a.detach().float() - b.detach().float()).abs().max()) for a, b in zip(got, want))


def _standalone_model(source: str, state: dict, directory: Path) -> nn.Module:
    """The generated source imported from ``directory`` and built, with ``state`` loaded (strictly)."""
    path = directory / "model.py"
    path.write_text(source, encoding="utf-8")
    net = _import_source(path).build()
    net.load_state_dict(state)
    return net.eval()


def _write_pytorch(model, spec, title, xs, ref, files) -> float:
    from ..utils import atomic_torch_save, atomic_write_text

    out, weights = files
    source = standalone_source(spec, title)
    with tempfile.TemporaryDirectory() as d:
        net = _standalone_model(source, model.state_dict(), Path(d))
        with torch.no_grad():
            diff = _max_diff(net(*xs), ref)
    _check(diff, "pytorch")
    atomic_torch_save(model.state_dict(), weights)
    atomic_write_text(out, source)
    return diff


def _write_torchscript(model, spec, title, xs, ref, files) -> float:
    (out,) = files
    with tempfile.TemporaryDirectory() as d:  # TorchScript reads the classes' source from the file
        scripted = torch.jit.script(_standalone_model(standalone_source(spec, title), model.state_dict(), Path(d)))
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
    loaded = torch.jit.load(io.BytesIO(buf.getvalue()))
    with torch.no_grad():
        diff = _max_diff(loaded(*xs), ref)
    _check(diff, "torchscript")
    from ..utils import atomic_write_bytes

    atomic_write_bytes(out, buf.getbuffer())
    return diff


class _Inference(nn.Module):
    """The stablenas network with the standalone model's interface: images -> logits (the networks
    return ``(logits, None)`` in eval mode); for the language model (tokens, hidden) -> (logits,
    last hidden state)."""

    def __init__(self, model: nn.Module, recurrent: bool):
        super().__init__()
        self.model, self.recurrent = model, recurrent

    def forward(self, *xs: torch.Tensor) -> Any:
        if not self.recurrent:
            return self.model(xs[0])[0]
        from ..data.ptb import RNNInput

        logits = self.model(RNNInput(*xs))
        return logits, self.model.last_hidden[-1]


_ONNX_NAMES = {False: (["input"], ["logits"], {"input": {0: "batch"}, "logits": {0: "batch"}}),
               True: (["tokens", "hidden"], ["logits", "last_hidden"],
                      {"tokens": {1: "batch"}, "hidden": {0: "batch"}, "logits": {0: "tokens_x_batch"},
                       "last_hidden": {0: "batch"}})}


def _write_onnx(model, spec, title, xs, ref, files) -> float:
    import onnxruntime

    (out,) = files
    buf = io.BytesIO()
    recurrent = len(xs) == 2
    inputs, outputs, axes = _ONNX_NAMES[recurrent]
    with warnings.catch_warnings():  # the exporter's tracer notes the cells' shape checks; the check below rules
        warnings.simplefilter("ignore")
        torch.onnx.export(_Inference(model, recurrent), xs, buf, dynamo=False, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes, opset_version=17)
    session = onnxruntime.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: x.numpy() for n, x in zip(inputs, xs)})
    diff = _max_diff([torch.from_numpy(a) for a in got], ref)
    _check(diff, "onnx")
    from ..utils import atomic_write_bytes

    atomic_write_bytes(out, buf.getbuffer())
    return diff


def _check(diff: float, fmt: str) -> None:
    if not diff <= TOLERANCE[fmt]:
        raise ExportError(f"the exported {fmt} model differs from the stablenas network by {diff:.3g} "
                          f"(allowed {TOLERANCE[fmt]:g}); nothing was written")


_WRITERS = {"pytorch": _write_pytorch, "torchscript": _write_torchscript, "onnx": _write_onnx}


def _check_batch(name: str, sizes: dict, side: int, seed: int) -> tuple[torch.Tensor, ...]:
    """2 random images of side ``side``, or for the language model 2 random token sequences of that
    length and a random carried-in hidden state."""
    gen = torch.Generator().manual_seed(seed)
    if KINDS[name].language_model:
        return (torch.randint(sizes["ntoken"], (side, 2), generator=gen),
                torch.randn(2, sizes["nhid"], generator=gen).mul(0.5))
    return (torch.randn(2, sizes["in_channels"], side, side, generator=gen),)


def _output_files(fmt: str, out: Path) -> tuple[Path, ...]:
    if fmt == "pytorch":
        if out.suffix != ".py":
            raise ExportError(f"--out {out}: the pytorch format writes Python source, name it NAME.py "
                              f"(the weights go beside it as NAME.pt)")
        return out, out.with_suffix(".pt")
    return (out,)


def export_network(genotype: Genotype | str | Path, fmt: str, out: str | Path, *, network: str = "auto",
                   sizes: dict | None = None, input_size: int | None = None, seed: int = 0) -> Exported:
    """Write ``genotype``'s evaluation network to ``out`` in format ``fmt`` (see the module docstring).

    ``sizes``: ``C``, ``layers``, ``num_classes``, ``in_channels`` (default: the network's; the language
    model: ``C`` its hidden size, ``num_classes`` its vocabulary); the
    weights are drawn with ``seed``, except for a finished training run directory, whose trained
    weights and sizes are exported. The check batch is 2 random images of side ``input_size``
    (default: the run's, else 32, ImageNet 224), for the language model 2 random sequences of that
    many tokens (default: the run's window, else 35). Existing files are never overwritten.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose {', '.join(FORMATS)}")
    files = _output_files(fmt, Path(out))
    taken = [str(f) for f in files if f.exists()]
    if taken:
        raise ExportError(f"{', '.join(taken)} exists; choose another --out (export never overwrites a file)")
    if fmt == "onnx" and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")):
        raise ExportError("the onnx format needs the onnx and onnxruntime packages: pip install 'stablenas[export]'")
    from ..evaluate.train import resolve_genotype

    g = resolve_genotype(genotype)
    trained = _trained_run(genotype)
    if trained is not None:
        given = [k for k, v in (sizes or {}).items() if v is not None]
        if given or network not in ("auto", trained[0]):
            raise ExportError(f"{genotype} is a training run: its weights fix the network ({trained[0]}) and the "
                              f"sizes; drop {', '.join(given) or '--network'}")
        network, sizes, state, input_size = trained[0], trained[1], trained[2], input_size or trained[3]
    model, name, full = _reference(g, network, sizes or {}, seed)
    if trained is not None:
        model.load_state_dict(state)
    spec = _spec(g, model, name, full) if fmt != "onnx" else {}
    xs = _check_batch(name, full, input_size or KINDS[name].side, seed)
    with torch.no_grad():
        ref = _outputs(_Inference(model, KINDS[name].language_model)(*xs))
    title = KINDS[name].title if not (isinstance(genotype, str) and genotype in _published()) \
        else f"{genotype} in the {KINDS[name].title}"
    files[0].parent.mkdir(parents=True, exist_ok=True)
    diff = _WRITERS[fmt](model, spec, title, xs, ref, files)
    return Exported(files, name, full, tuple(xs[0].shape), diff, trained is not None)
