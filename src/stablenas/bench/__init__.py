"""``stablenas bench``: how fast and how big a search step is, against plain DARTS, in one run.

Every figure is measured in the same process, one measurement after another (first order, second
order, each method preset, lambda_max), each with its engines interleaved repeat by repeat and only
its own models and graphs alive: with the library's engine ("fast": ``search.loop.Search`` on the
fast supernet), with the plain reimplementation of the original DARTS search model ("plain",
``supernet.reference``: per-op Python loop, ``none`` computed, channels-first, DARTS's architect),
and with that same plain model after the one line a user tries first,
``model.to(memory_format=torch.channels_last)`` with channels_last inputs ("plain_cl", the fair
baseline: it is most of what the engine's layout work buys for free). All start from the same
weights and alpha and see the same seeded synthetic batches. Each figure is the median over
``repeats`` after ``warmup`` untimed calls, and comes with same-run ratios plain / fast: the ratio
of the medians and the median of the per-repeat paired ratios (each repeat times every engine once,
so a load spike hits both sides of a pair; the 1-minute load average is recorded next to each
repeat). Peak memory runs one measurement per fresh subprocess.

Two sizes are named (``SIZES``, ``--size``): ``paper`` (DARTS's search network: 8 cells x 16
channels, 3x32x32, batch 64) and ``cpu-study`` (5 cells x 8 channels, 1x28x28, batch 64, the size
of the CPU studies, where per-kernel overhead dominates even more); by default both run.

Where each part lives:

* ``options``: :class:`BenchConfig` (one size, every switch), ``SIZES``, and :class:`BenchOptions`,
  the validated command-line options that expand into one config per size;
* ``steps``: the synthetic data, the ``Search`` (plain DARTS or a method preset) and its step, the
  plain model in either layout, each engine's lambda_max objective;
* ``timing``: the harness (interleaved repeats, wall and CPU seconds, load, CUDA peaks, ratios);
* ``run``: :func:`run_bench`, the measurements in order and the JSON record;
* ``hessian``: lambda_max per engine and the exact-Hessian check of it;
* ``memory``: the peak-memory subprocesses (``python -m stablenas.bench worker``);
* ``scaling``: the step at twice the batch, channels and cells against its FLOPs;
* ``table``: :func:`format_table`, the printed summary;
* ``dp``: ``--nproc``, the data-parallel step against one process (:func:`run_dp_bench`);
* ``tune``: ``--tune``, the engine options timed and stored per device (:func:`run_tune`).
"""

from __future__ import annotations

from .dp import format_dp, run_dp_bench
from .options import SIZES, BenchConfig, BenchOptions, add_size_arguments, parse_input, sized, sized_from_args
from .run import run_bench
from .steps import synthetic_dataset
from .table import format_table
from .tune import format_tune, run_tune

__all__ = ["SIZES", "BenchConfig", "BenchOptions", "add_size_arguments", "format_dp", "format_table", "format_tune",
           "parse_input", "run_bench", "run_dp_bench", "run_tune", "sized", "sized_from_args", "synthetic_dataset"]
