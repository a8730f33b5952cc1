import subprocess
import sys
from pathlib import Path

import pytest

# Note: torch 2.13's CPU oneDNN backward was seen to corrupt the heap with ONE intra-op thread on
# 4-channel supernets fed 8x8 digits (free(): invalid size); the tiny test nets use 8 channels and the
# default thread count.


@pytest.fixture
def tiny_overrides():
    """A digits search small enough to run in seconds."""
    return ["data.dataset=digits", "data.subset=null", "data.batch_size=32", "network.channels=8",
            "network.layers=2", "network.stem_multiplier=2", "optim.epochs=2", "search.steps_per_epoch=3",
            "search.val_batches=2", "network.channels_last=false"]


@pytest.fixture
def hold_lock():
    """Hold a run directory's lock from another process (a plain flock, as a live writer does);
    returns a function path -> Popen; every holder is killed at teardown."""
    procs: list[subprocess.Popen] = []

    def hold(path: Path) -> subprocess.Popen:
        code = ("import fcntl, os, sys, time\n"
                f"fd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "os.ftruncate(fd, 0); os.write(fd, f'{os.getpid()}\\n'.encode())\n"
                "print('held', flush=True)\n"
                "time.sleep(60)\n")
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()
