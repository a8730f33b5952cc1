"""The SIGKILL/SIGINT driver and the tiny search that the fault tests resume (tests/runs/test_faults.py,
tests/methods/test_harness.py).

One driver process imports torch and stablenas once and forks a fresh child per case, which patches the
loop to signal itself at a chosen global step and runs the CLI (tests/runs/test_faults.py says why)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_SEARCH

FAULT_TINY = [*TINY_SEARCH, "search.val_batches=1", "space=s3", "threads=1", "evaluation.lookup=false"]

# reads one JSON request per line, forks a child per request, answers the child's exit status
DRIVER = r"""
import json, os, sys, traceback
from stablenas.search.loop import Search
from stablenas.cli import main
orig = Search.weight_step
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(err, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        at, sig = req["at"], req["sig"]
        def step(self, batch):
            if self.global_step == at:
                os.kill(os.getpid(), sig)   # SIGKILL: dies here; SIGINT/SIGTERM: the handler sets the flag
            return orig(self, batch)
        Search.weight_step = step
        code = 0
        try:
            main(req["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


@pytest.fixture(scope="module")
def cut():
    """``cut(at, sig, argv, stderr_file) -> exit status`` of a CLI child signalled at global step ``at``."""
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)

    def run(at: int, sig: int, argv: list[str], stderr: Path) -> tuple[int, str]:
        proc.stdin.write(json.dumps({"at": at, "sig": int(sig), "argv": argv, "stderr": str(stderr)}) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, "the fault driver died"
        return json.loads(line), stderr.read_text()

    yield run
    proc.stdin.close()
    proc.wait(timeout=60)
