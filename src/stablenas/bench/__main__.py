"""``python -m stablenas.bench worker|dp-worker '<json>'``: the bench's subprocesses (one memory
measurement, one side of a data-parallel round); not a user command."""

from __future__ import annotations

import json
import os
import sys

from .dp import dp_worker
from .memory import worker_main


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "dp-worker":
        out = dp_worker(json.loads(argv[1]))
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(out), flush=True)
        return 0
    if len(argv) == 2 and argv[0] == "worker":
        print(json.dumps(worker_main(json.loads(argv[1]))), flush=True)
        return 0
    print("usage: stablenas bench ... (this module's entry point is only the memory worker)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
