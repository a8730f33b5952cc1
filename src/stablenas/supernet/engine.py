"""Engine options per device: each device type's defaults, the file ``stablenas bench --tune``
writes (``engine-<device>.json`` in the user's cache), which of the two a search runs
(:func:`apply`), and the compiled first-order forward (:class:`StepForward`).

CPU defaults are ``EngineOptions()``, every one measured on CPUs (the ablation on the performance
page). CUDA defaults are reasoned from what cuDNN does and are *unmeasured* until a GPU run of
``benchmarks/cuda_check.sh`` measures them; ``--tune`` replaces them with timings on the user's
device:

* ``conv_avg_pool`` off: it exists because CPU ``avg_pool2d`` on channels_last maps is slow; CUDA
  has a native NHWC pooling kernel, and a ones-kernel depthwise conv is a slower cuDNN call.
* ``phase_dilation``, ``linear_pw``, ``light_recompute`` never: the first avoids oneDNN's generic
  dilated-depthwise backward (CPU only), cuDNN runs 1x1 channels_last convs as a GEMM itself, and the
  third only matters under ``recompute``.
* ``recompute`` off: it trades kernels for memory; a GPU step at the DARTS size is launch-bound and
  its activations fit (DARTS searches on one 11 GB GTX 1080 Ti: SDARTS paper, section 5.1).
* the rest as on CPU: fewer kernels and saved tensors on any device (``fused``, ``shared_pools``,
  ``dense_grads``: one dense copy per node instead of one per BN backward, ...); ``compile_step``
  off until measured.

The file is JSON only (never code): a corrupt, foreign or ill-typed one is ignored with one warning
line, and the defaults run.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..utils import atomic_write_text
from .kernels import EngineOptions

FORMAT = "stablenas-engine/1"
DIR_ENV = "STABLENAS_ENGINE_DIR"  # the directory of the tuned files (default: the user's cache)
WHERE = ("cpu", "always", "never")
SET_BY_CODE = ("double_backward",)  # switched by code that differentiates twice, never tuned

CUDA_DEFAULTS = EngineOptions(conv_avg_pool=False, phase_dilation="never", linear_pw="never",
                              light_recompute="never", recompute=False)


def defaults_for(device_type: str) -> EngineOptions:
    """The engine defaults of a device type ("cpu", "cuda"; anything else runs the CPU ones)."""
    return CUDA_DEFAULTS if device_type == "cuda" else EngineOptions()


def device_name(device: torch.device) -> str:
    """The model of ``device`` (a tuned file holds for that model only)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_file(device_type: str) -> Path:
    """``$STABLENAS_ENGINE_DIR/engine-<device>.json``, else under ``$XDG_CACHE_HOME/stablenas``."""
    root = os.environ.get(DIR_ENV)
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stablenas")
    return Path(root).expanduser().absolute() / f"engine-{device_type}.json"


@dataclass(frozen=True)
class EngineChoice:
    """The options a search runs and where they come from ("cuda defaults", "tuned: <file>"; None
    for a network without engine options)."""

    options: EngineOptions | None
    source: str

    def record(self) -> dict:
        return {"options": None if self.options is None else asdict(self.options), "source": self.source}


def check_options(raw: Any) -> dict:
    """``raw`` as EngineOptions changes, or ValueError naming the first bad entry."""
    if not isinstance(raw, dict):
        raise ValueError("'options' is not an object")
    kinds = {f.name: type(getattr(EngineOptions(), f.name)) for f in fields(EngineOptions)}
    for key, value in raw.items():
        if key not in kinds or key in SET_BY_CODE:
            raise ValueError(f"unknown engine option {key!r}")
        kind = kinds[key]
        ok = (isinstance(value, bool) if kind is bool else
              (isinstance(value, int) and not isinstance(value, bool) and value >= 0) if kind is int else
              value in WHERE)
        if not ok:
            raise ValueError(f"engine option {key!r}: bad value {value!r}")
    return raw


def read_tuned(path: Path, device: torch.device) -> dict:
    """The option changes a tuned file holds for ``device``; ValueError says why it does not apply."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file")
    if data.get("device") != device.type:
        raise ValueError(f"tuned for device {data.get('device')!r}, not {device.type!r}")
    name = device_name(device)
    if data.get("device_name") != name:
        raise ValueError(f"tuned on {data.get('device_name')!r}, this is {name!r}")
    return check_options(data.get("options"))


def resolve(device: torch.device, log: Callable[[str], None]) -> EngineChoice:
    """The tuned file of ``device``'s type when there is a valid one, else the type's defaults."""
    base = defaults_for(device.type)
    choice = EngineChoice(base, f"{device.type} defaults")
    path = cache_file(device.type)
    if path.exists():
        try:
            choice = EngineChoice(replace(base, **read_tuned(path, device)), f"tuned: {path}")
        except ValueError as e:
            log(f"warning: {path}: ignored ({e}); running the {device.type} defaults "
                "(`stablenas bench --tune` rewrites it)")
    if choice.options.compile_step and device.type != "cuda":
        raise ConfigError(f"engine option compile_step (from {choice.source}) needs a CUDA device, the device "
                          f"is {device.type}; remove it from the file")
    return choice


def apply(net: nn.Module, device: torch.device, log: Callable[[str], None]) -> EngineChoice:
    """Resolve ``device``'s engine options and set them on ``net``'s supernet modules. Modules are
    built with ``EngineOptions()``; when the choice is that, they are left as built."""
    from .network import _engine_modules, set_engine

    choice = resolve(device, log)
    if not _engine_modules(net):
        return EngineChoice(None, "none (the network has no engine options)")
    if choice.options != EngineOptions():
        set_engine(net, choice.options)
    return EngineChoice(getattr(net, "engine", choice.options), choice.source)


def write_tuned(device: torch.device, changes: dict, timings: dict) -> Path:
    """Store a tuning result (option changes from the device's defaults) as the device's file."""
    path = cache_file(device.type)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "device": device.type, "device_name": device_name(device),
            "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "options": check_options(dict(changes)), "timings": timings}
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path


class StepForward:
    """The supernet forward of a search step: ``net(...)``, or under the engine option
    ``compile_step`` ``torch.compile(net, mode="reduce-overhead")`` (CUDA graphs) in training mode
    outside double backward (a CUDA graph's backward cannot be differentiated again). Compiled on
    first use, again for another network; a compile or replay error falls back to eager for the
    rest of the run, with one warning line."""

    def __init__(self, log: Callable[[str], None], compiler: Callable[[nn.Module], Callable] | None = None):
        self.log = log
        self.compiler = compiler or (lambda m: torch.compile(m, mode="reduce-overhead"))
        self.compiled: Callable | None = None
        self.failed = False
        self._for: nn.Module | None = None

    def __call__(self, net: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        opts = getattr(net, "engine", None)
        if self.failed or opts is None or not opts.compile_step or opts.double_backward or not net.training:
            return net(*args, **kwargs)
        try:
            if self._for is not net:
                self.compiled, self._for = self.compiler(net), net
            return self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler failure: eager is always correct
            self.compiled, self._for, self.failed = None, None, True
            why = (str(e).splitlines() or [""])[0][:200]
            self.log(f"warning: engine option compile_step: the compiled forward failed ({type(e).__name__}: "
                     f"{why}); eager from here")
            return net(*args, **kwargs)
