"""Every benchmark in benchmarks/ runs at a tiny size and prints what its docstring promises (the
numbers the docs cite come from these scripts, so a script that no longer runs fails here)."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--cells", "1", "--channels", "8", "--batch", "4", "--input", "1x8x8", "--threads", "1"]


def _run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, env={"OMP_NUM_THREADS": "1", "PATH": str(Path(sys.executable).parent)})


def test_index_lists_every_benchmark():
    index = (BENCH / "README.md").read_text()
    for f in BENCH.glob("*.py"):
        assert f"`{f.name}`" in index, f.name


def test_ablation_times_the_engine_and_the_chosen_variants():
    r = _run("engine_ablation.py", *TINY, "--repeats", "1", "--warmup", "0", "--only", "no-fused-path,plain-darts")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert [x["variant"] for x in rows] == ["engine", "no-fused-path", "plain-darts"]
    assert all(x["median_s"] > 0 for x in rows)
    assert "| engine |" in r.stdout and "1.00 (1.00)" in r.stdout


def test_ablation_refuses_an_unknown_variant():
    r = _run("engine_ablation.py", *TINY, "--only", "nope")
    assert r.returncode == 2 and "nope" in r.stderr


def test_memory_probe_reports_a_growth():
    r = _run("engine_memory.py", *TINY, "--what", "first_order")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["what"] == "first_order" and out["growth_mb"] > 0


def test_saved_tensor_probe_attributes_bytes_to_source_lines():
    r = _run("engine_saved.py", *TINY, "--what", "both", "--top", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    head = next(x for x in r.stdout.splitlines() if "saved in" in x)
    assert float(head.split("MB saved")[0].split()[-1]) > 0
    assert any(".py:" in x for x in r.stdout.splitlines())


def test_profile_counts_aten_calls_of_both_engines():
    r = _run("engine_profile.py", *TINY, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    for engine in ("engine", "plain_cl"):
        assert out[engine]["aten_calls"] > 0 and out[engine]["top"]


def test_hypergradient_error_is_zero_for_the_exact_mode():
    r = _run("hypergradient_error.py", "--seeds", "2", "--set", "data.dataset=digits", "--set", "data.subset=null",
             "--set", "data.batch_size=16", "--set", "network.channels=8", "--set", "network.layers=3",
             "--set", "network.stem_multiplier=2")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = {x.split()[3]: x for x in r.stdout.splitlines()}
    exact = float(lines["autograd"].split("relative error")[1].split()[0])
    assert exact < 1e-10  # double backward against double backward, float64
    assert float(lines["finite-difference"].split("relative error")[1].split()[0]) > 1e-6


def test_s5_calibration_trains_each_architecture(tmp_path):
    r = _run("s5_calibrate.py", "--out", str(tmp_path / "cal"), "--jobs", "1", "--seeds", "0",
             "--set", "dataset=digits", "--set", "epochs=1", "--set", "subset=null", "--set", "channels=4",
             "--set", "layers=2", "--set", "batch_size=32", "--set", "threads=1", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert sorted(x["index"] for x in rows) == [0, 17, 40, 74]
    assert all(0.0 <= x["test_acc"] <= 1.0 for x in rows)


def test_cuda_check_says_no_cuda_in_one_line_and_writes_its_summary(tmp_path):
    import torch

    steps = "env,search" if torch.cuda.is_available() else "env,pytest,search"
    r = _run("cuda_check.py", "--out", str(tmp_path / "check"), "--steps", steps, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("no CUDA device") == (0 if torch.cuda.is_available() else 1)
    res = json.loads((tmp_path / "check" / "cuda_check.json").read_text())
    assert res["env"]["torch"] == torch.__version__ and res["cuda"] == torch.cuda.is_available()
    assert all(st["rc"] == 0 for st in res["steps"].values()), res["steps"]
    assert res["search_result"]["s_per_step"] > 0 and res["search_result"]["engine"]["source"]
    if "pytest" in res["steps"]:
        assert "skipped" in " ".join(res["steps"]["pytest"]["tail"])
    text = (tmp_path / "check" / "cuda_check.txt").read_text()
    assert "s/step" in text and text.splitlines()[0].startswith("stablenas cuda check: torch")
