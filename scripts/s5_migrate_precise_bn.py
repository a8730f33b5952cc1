"""One-off: move an S5 work directory started before ``precise_bn`` joined S5_PROTOCOL onto it.

``precise_bn`` only acts after the last training epoch (it recomputes BatchNorm statistics, then
evaluates), so every epoch checkpoint of such a directory is exactly what the new protocol trains.
This rewrites each run's saved config and the plan, and drops finished results so that the next
``stablenas s5-table`` re-evaluates them from their final checkpoint instead of retraining.

    python scripts/s5_migrate_precise_bn.py runs/s5-table
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(work: str) -> None:
    root = Path(work)
    plan = json.loads((root / "plan.json").read_text())
    plan["protocol"]["precise_bn"] = True
    (root / "plan.json").write_text(json.dumps(plan, indent=1) + "\n")
    for run in sorted(root.glob("arch*-seed*")):
        cfg_file = run / "train.json"
        if not cfg_file.exists():
            continue
        saved = json.loads(cfg_file.read_text())
        saved["config"]["precise_bn"] = True
        cfg_file.write_text(json.dumps(saved, indent=2) + "\n")
        if (run / "result.json").exists():
            (run / "result.json").rename(run / "result.before-precise-bn.json")
        print(f"migrated {run}")


if __name__ == "__main__":
    main(sys.argv[1])
