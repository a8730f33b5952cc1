"""``stablenas export``: every format reproduces the stablenas evaluation network with the same weights.

The reference is always the package's own network (:func:`stablenas.export.build_network`) with the
exported weights loaded into it, run on a batch the exporter never saw (other batch size, other
image side), so a file that matches only the exporter's own check batch fails here.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from stablenas.export import build_network, export_network

NB201_ARCH = "|nor_conv_3x3~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|nor_conv_1x1~1|skip_connect~2|"
# name -> (genotype, export_network keywords, build_network keywords, check input shape: images, or
# for the language model tokens (T, B))
CASES = {
    "darts": ("DARTS_V2", {"sizes": {"C": 8, "layers": 3}}, {"C": 8, "layers": 3, "auxiliary": False},
              (3, 3, 40, 40)),
    "imagenet": ("DARTS_V2", {"network": "imagenet", "sizes": {"C": 8, "layers": 3}, "input_size": 64},
                 {"network": "imagenet", "C": 8, "layers": 3, "auxiliary": False}, (2, 3, 48, 48)),
    "nb201": (NB201_ARCH, {"sizes": {"C": 8, "layers": 1}}, {"C": 8, "N": 1}, (3, 3, 24, 24)),
    "rnn": ("DARTS_V2_RNN", {"sizes": {"C": 16, "num_classes": 50}, "input_size": 6}, {"nhid": 16, "ntoken": 50},
            (9, 3)),
}


def _reference(case: str, state: dict) -> torch.nn.Module:
    genotype, _, sizes, _ = CASES[case]
    net = build_network(genotype, **sizes)
    net.load_state_dict(state)  # strict: the exported parameter names are stablenas's
    return net.eval()


def _inputs(case: str) -> list[torch.Tensor]:
    """A batch the exporter never saw (other size and length than its check batch)."""
    gen = torch.Generator().manual_seed(7)
    shape = CASES[case][3]
    if case == "rnn":  # tokens and a carried-in hidden state
        return [torch.randint(50, shape, generator=gen), torch.randn(shape[1], 16, generator=gen)]
    return [torch.randn(*shape, generator=gen)]


@torch.no_grad()
def _expected(case: str, net: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The stablenas network's outputs: logits (and, for the language model, the last hidden state)."""
    if case == "rnn":
        from stablenas.data.ptb import RNNInput

        return [net(RNNInput(*inputs)), net.last_hidden[-1]]
    return [net(inputs[0])[0]]


def _diff(got, want: list[torch.Tensor]) -> float:
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    assert len(got) == len(want)
    return max(float((a - b).abs().max()) for a, b in zip(got, want))


@pytest.fixture(scope="module")
def pytorch_files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("export")
    for case, (genotype, options, _, _) in CASES.items():
        res = export_network(genotype, "pytorch", d / f"{case}.py", **options)
        assert res.files == (d / f"{case}.py", d / f"{case}.pt") and res.max_abs_diff == 0.0
        torch.save(_inputs(case), d / f"{case}_input.pt")
    return d


# a fresh interpreter in which importing stablenas fails: the generated file must not need it
_STANDALONE = textwrap.dedent("""
    import importlib.util, sys
    class NoStablenas:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "stablenas":
                raise ImportError("the standalone model imported stablenas")
    sys.meta_path.insert(0, NoStablenas())
    import torch
    d = sys.argv[1]
    for case in sys.argv[2:]:
        spec = importlib.util.spec_from_file_location(case, f"{d}/{case}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        net = module.load()
        with torch.no_grad():
            torch.save(net(*torch.load(f"{d}/{case}_input.pt")), f"{d}/{case}_output.pt")
    assert not [m for m in sys.modules if m.startswith("stablenas")]
""")


def test_pytorch_source_runs_without_stablenas_and_equals_the_network(pytorch_files):
    d = pytorch_files
    subprocess.run([sys.executable, "-c", _STANDALONE, str(d), *CASES], check=True, cwd=d, timeout=120)
    for case in CASES:
        source = (d / f"{case}.py").read_text()
        assert "stablenas" not in source  # no import, not even a mention
        ref = _reference(case, torch.load(d / f"{case}.pt"))
        assert _diff(torch.load(d / f"{case}_output.pt"), _expected(case, ref, _inputs(case))) <= 1e-6, case


@pytest.mark.parametrize("case", ["darts", "nb201", "rnn"])
def test_torchscript_equals_the_network(tmp_path, case):
    genotype, options, _, _ = CASES[case]
    export_network(genotype, "torchscript", tmp_path / "model.ts", **options)
    scripted = torch.jit.load(tmp_path / "model.ts")
    ref = _reference(case, scripted.state_dict())
    inputs = _inputs(case)
    with torch.no_grad():
        assert _diff(scripted(*inputs), _expected(case, ref, inputs)) <= 1e-6


@pytest.mark.parametrize("case", ["darts", "nb201", "rnn"])
def test_onnx_matches_pytorch_within_1e5(tmp_path, case):
    ort = pytest.importorskip("onnxruntime", reason="the onnx format needs pip install 'stablenas[export]'")
    genotype, options, build_sizes, _ = CASES[case]
    res = export_network(genotype, "onnx", tmp_path / "model.onnx", **options, seed=3)
    torch.manual_seed(3)  # the exporter draws the weights from this seed
    ref = build_network(genotype, **build_sizes).eval()
    # the graph keeps the export's image side (32) or sequence length (6); the batch axis is dynamic,
    # so another batch size than the exporter's
    gen = torch.Generator().manual_seed(7)
    if case == "rnn":
        inputs, names = [torch.randint(50, (6, 5), generator=gen), torch.randn(5, 16, generator=gen)], ["tokens",
                                                                                                           "hidden"]
    else:
        inputs, names = [torch.randn(5, 3, 32, 32, generator=gen)], ["input"]
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = [torch.from_numpy(a) for a in session.run(None, dict(zip(names, (x.numpy() for x in inputs))))]
    diff = _diff(got, _expected(case, ref, inputs))
    print(f"{case}: max |onnxruntime - pytorch| = {diff:.3g} (exporter's check: {res.max_abs_diff:.3g})")
    assert diff <= 1e-5


def test_a_training_run_exports_its_trained_weights(tmp_path, capsys):
    from stablenas.evaluate.train import train_config, train_genotype
    from stablenas.runs.checkpoint import load_checkpoint

    cfg = train_config("darts", ["steps_per_epoch=1", "evaluate_test=false", "threads=1"], dataset="digits",
                       epochs=1, channels=8, layers=2, batch_size=32)
    train_genotype("DARTS_V2", cfg, tmp_path / "run", progress=False, loggers="none", log=lambda s: None)
    code, out, err = run_cli(["export", tmp_path / "run", "--format", "pytorch", "--out", tmp_path / "m.py"], capsys)
    assert code == 0, err
    assert "trained weights" in out and "2x1x8x8" in out  # the run's input shape (digits: 1x8x8)
    trained = load_checkpoint(tmp_path / "run" / "checkpoint.pt", kind="train")["model"]
    exported = torch.load(tmp_path / "m.pt")
    assert set(exported) == {k for k in trained if not k.startswith("auxiliary_head.")}
    assert all(torch.equal(exported[k], trained[k]) for k in exported)
    code, _, err = run_cli(["export", tmp_path / "run", "-f", "onnx", "-o", tmp_path / "m.onnx",
                            "--channels", "16"], capsys)
    assert code == 2 and err.startswith("error: ") and "training run" in err and "C" in err
    assert not (tmp_path / "m.onnx").exists()
    (tmp_path / "run" / "result.json").unlink()  # a run still training: its weights are not final
    code, _, err = run_cli(["export", tmp_path / "run", "-f", "pytorch", "-o", tmp_path / "n.py"], capsys)
    assert code == 2 and err.startswith("error: ") and "not finished" in err and "--resume" in err
    assert not (tmp_path / "n.py").exists()


def test_a_recurrent_training_run_exports_the_weights_its_perplexity_was_measured_with(tmp_path, capsys):
    from support.ptb import rnn_cfg, synthetic_corpus

    from stablenas.skeletons.rnn.genotype import DARTS_V2_RNN
    from stablenas.skeletons.rnn.train import train_recurrent

    corpus = synthetic_corpus(lines=40)
    train_recurrent(DARTS_V2_RNN, rnn_cfg(epochs=1), tmp_path / "run", corpus=corpus, log=lambda s: None)
    code, out, err = run_cli(["export", tmp_path / "run", "-f", "pytorch", "-o", tmp_path / "lm.py"], capsys)
    assert code == 0, err
    assert "ptb network, trained weights" in out and "8x2" in out  # the run's window: bptt 8
    best = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["best_state"]
    exported = torch.load(tmp_path / "lm.pt")
    assert set(exported) == set(best) and all(torch.equal(exported[k], best[k]) for k in best)


def test_onnx_without_its_packages_names_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    code, _, err = run_cli(["export", "DARTS_V2", "-f", "onnx", "-o", tmp_path / "m.onnx"], capsys)
    assert code == 2 and err.strip() == ("error: the onnx format needs the onnx and onnxruntime packages: "
                                         "pip install 'stablenas[export]'")
    assert list(tmp_path.iterdir()) == []


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("argv, names", [
    (["NO_SUCH_GENOTYPE", "--format", "pytorch", "--out", "{d}/m.py"], ["NO_SUCH_GENOTYPE", "DARTS_V2"]),
    (["DARTS_V2", "--format", "keras", "--out", "{d}/m.h5"], ["keras", "pytorch, torchscript, onnx"]),
    (["DARTS_V2", "--format", "pytorch", "--out", "{d}/m.txt"], ["m.txt", ".py"]),
    (["DARTS_V2_RNN", "--format", "torchscript", "--out", "{d}/m.ts", "--layers", "3"], ["recurrent", "layers"]),
    (["DARTS_V2", "--format", "torchscript", "--out", "{d}/m.ts", "--network", "nb201"], ["nb201", "cifar"]),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys, argv, names):
    code, out, err = run_cli(["export", *(a.format(d=tmp_path) for a in argv)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(n in lines[0] for n in names), lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt, taken", [("pytorch", "m.py"), ("pytorch", "m.pt"), ("onnx", "m.onnx")])
def test_an_existing_output_is_left_byte_identical(tmp_path, capsys, fmt, taken):
    (tmp_path / taken).write_bytes(b"the user's file\n")
    before = _sha(tmp_path / taken)
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.py")
    code, _, err = run_cli(["export", "DARTS_V2", "--format", fmt, "--out", out, "--channels", "8"], capsys)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert taken in err and "exists" in err
    assert _sha(tmp_path / taken) == before
    assert [p.name for p in tmp_path.iterdir()] == [taken]
