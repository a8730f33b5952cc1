"""The prepared device check: one run on a GPU (at most 8 minutes on one H100) answers whether the engine
is right and fast there. Steps, each a subprocess with its own time cap so one hang cannot eat the rest:

1. ``env``: torch, CUDA and cuDNN versions, the device, the CPU;
2. ``pytest``: ``pytest -m cuda -x -q`` (tests/test_cuda.py: CUDA against CPU in float64, every preset,
   autocast training, host syncs, resume after a kill);
3. ``bench``: ``stablenas bench --size paper`` on the device: fast vs plain vs plain_cl, first and second
   order, lambda_max, peak CUDA memory (``torch.cuda.max_memory_allocated``);
4. ``tune``: ``stablenas bench --tune`` (its file goes to the output directory, not the user's cache);
5. ``search``: one epoch of the ``darts`` preset on synthetic CIFAR-size images (3x32x32, 10 classes) with
   its seconds per step, running the tuned options.

It writes ``cuda_check.json`` (everything) and ``cuda_check.txt`` (the summary) under ``--out``. Without a
CUDA device it says so in one line, runs the CPU parts at tiny sizes (under 2 minutes on 2 cores) and exits
0. ``benchmarks/cuda_check.sh`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("env", "pytest", "bench", "tune", "search")
# caps in seconds (GPU run: they sum to 450 of the 480 allowed)
CAPS = {"pytest": 190, "bench": 120, "tune": 70, "search": 70}
TINY = ["--cells", "1", "--channels", "8", "--batch", "8", "--input", "1x8x8", "--threads", "1"]

SEARCH = r"""
import json, sys, time
import stablenas as sn
from stablenas.bench import synthetic_dataset
from stablenas.registry import SKELETONS, SPACES
from stablenas.search.loop import Search
from stablenas.utils import resolve_device
out, device, steps, sets = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
cfg = sn.load_config("darts", [f"device={device}", f"search.steps_per_epoch={steps}", "optim.epochs=1",
                               "search.val_batches=2", "evaluation.lookup=false", *sets])
bs = cfg.data.batch_size
data = SKELETONS[SPACES[cfg.space].skeleton].search_data(
    cfg, resolve_device(device), dataset=synthetic_dataset((3, 32, 32), 10, 2 * bs * steps + 2 * bs, 0))
t0 = time.perf_counter()
res = Search(cfg, out, progress=False, data=data).run()
row = json.loads(open(f"{out}/metrics.jsonl").read().splitlines()[-1])
status = json.loads(open(f"{out}/status.json").read())
print(json.dumps({"steps": steps, "batch": bs, "layers": cfg.network.layers, "channels": cfg.network.channels,
                  "train_seconds": row["seconds"], "s_per_step": row["seconds"] / steps,
                  "wall_s": time.perf_counter() - t0, "engine": status.get("engine"),
                  "genotype": res.genotype.to_dict()}))
"""


def environment(cuda: bool) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "python": platform.python_version(), "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
    try:
        env["cpu"] = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        env["cpu"] = platform.processor() or platform.machine()
    if cuda:
        p = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                   memory_gb=round(p.total_memory / 2**30, 1), devices=torch.cuda.device_count())
    return env


def run(name: str, cmd: list[str], cap: float, log_dir: Path, env: dict) -> dict:
    """One step as a subprocess: exit code, seconds, its output in ``<name>.log``, the output's tail."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=cap, cwd=ROOT, env=env)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        text = [t.decode(errors="replace") if isinstance(t, bytes) else (t or "") for t in (e.stdout, e.stderr)]
        rc, out = "timeout", "".join(text) + f"\ntimed out after {cap:.0f} s"
    (log_dir / f"{name}.log").write_text(out)
    shown = " ".join("<script>" if "\n" in c else c for c in cmd)
    return {"cmd": shown, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "tail": out.strip().splitlines()[-12:]}


def commands(cuda: bool, out: Path) -> dict[str, list[str]]:
    py, dev = sys.executable, "cuda" if cuda else "cpu"
    size = ["--size", "paper", "--repeats", "3", "--warmup", "2"] if cuda else [*TINY, "--repeats", "1", "--warmup",
                                                                                 "0"]
    bench = [py, "-m", "stablenas", "bench", *size, "--device", dev, "--methods", "none", "--no-exact",
             "--no-memory", "--curvature-iters", "3", "--json", str(out / "bench.json")]
    tune = [py, "-m", "stablenas", "bench", "--tune", "--device", dev, "--json", str(out / "tune.json"),
            *(["--tune-budget", "50", "--repeats", "3"] if cuda else [*TINY, "--tune-budget", "30", "--repeats", "1",
                                                                      "--warmup", "0"])]
    sets = [] if cuda else ["network.layers=2", "network.channels=8", "data.batch_size=16", "threads=1"]
    search = [py, "-c", SEARCH, str(out / "search"), dev, "50" if cuda else "2", json.dumps(sets)]
    tests = [py, "-m", "pytest", "-m", "cuda", "-x", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    return {"pytest": tests, "bench": bench, "tune": tune, "search": search}


def summary(res: dict) -> str:
    e = res["env"]
    lines = [f"stablenas cuda check: torch {e['torch']}, CUDA {e['cuda']}, cuDNN {e['cudnn']}, "
             f"device {e.get('device', 'none')}, CPU {e['cpu']} ({e['cpus']} cores)"]
    if not res["cuda"]:
        lines.append("CUDA absent: the CPU parts only, at tiny sizes")
    for name in STEPS[1:]:
        st = res["steps"].get(name)
        if st is None:
            continue
        lines.append(f"[{name}] rc {st['rc']}, {st['seconds']} s: {st['cmd']}")
        lines += [f"    {ln}" for ln in st["tail"] if ln.strip()]
    if "search_result" in res:
        s = res["search_result"]
        lines.append(f"search: darts preset, {s['layers']} cells x {s['channels']} channels, batch {s['batch']}, "
                     f"3x32x32 synthetic: {s['s_per_step']:.4f} s/step over {s['steps']} steps "
                     f"(engine: {(s.get('engine') or {}).get('source')})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output directory (created)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    args = p.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        p.error(f"--steps: unknown step {bad[0]!r}; choose from {', '.join(STEPS)}")
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    if not cuda:
        print("no CUDA device: running the CPU parts only, at tiny sizes", flush=True)
    env = {**os.environ, "STABLENAS_ENGINE_DIR": str(out / "engine-cache"), "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    res: dict = {"cuda": cuda, "env": environment(cuda), "steps": {}}
    cmds = commands(cuda, out)
    for name in (s for s in steps if s != "env"):
        print(f"[{name}] ...", flush=True)
        res["steps"][name] = st = run(name, cmds[name], CAPS[name], out, env)
        print(f"[{name}] rc {st['rc']}, {st['seconds']} s", flush=True)
        if name == "search" and st["rc"] == 0:
            res["search_result"] = json.loads(next(ln for ln in reversed(st["tail"]) if ln.startswith("{")))
            st["tail"] = [ln for ln in st["tail"] if not ln.startswith("{")]
    for name, f in (("bench", "bench.json"), ("tune", "tune.json")):
        if (out / f).exists():
            res[f"{name}_result"] = json.loads((out / f).read_text())
    if "pytest" in res["steps"]:
        m = re.search(r"(\d+) passed", "\n".join(res["steps"]["pytest"]["tail"]))
        res["pytest_passed"] = int(m.group(1)) if m else 0
    (out / "cuda_check.json").write_text(json.dumps(res, indent=1))
    text = summary(res)
    (out / "cuda_check.txt").write_text(text + "\n")
    print(text)
    print(f"written: {out / 'cuda_check.json'}, {out / 'cuda_check.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
