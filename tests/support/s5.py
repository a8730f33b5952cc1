"""A hand-made S5 ground-truth table (tests/experiments/test_s5.py, tests/cli/test_output.py)."""

from __future__ import annotations

from stablenas.skeletons.darts.s5_table import enumerate_s5


def fake_table(dataset: str = "fashion-mnist", n: int = 81) -> dict:
    """Accuracy 0.5 + index / 1000: the best is index 80 (all max_pool) at 0.58."""
    archs = enumerate_s5()[:n]
    return {
        "format": 1,
        "dataset": dataset,
        "space": "s5",
        "command": "hand-made",
        "protocol": {},
        "architectures": [
            {"index": i, "genotype": g.to_dict(), "test_acc": 0.5 + i / 1000, "params": 1, "seconds": 0.0}
            for i, g in enumerate(archs)
        ],
    }
