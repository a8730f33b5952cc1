"""``stablenas search --nproc N``: N ranks of one command on this machine, started the way
``torchrun --standalone --nproc_per_node N`` starts them, with what a terminal user needs from one
command:

- the launcher hosts the rendezvous store (torch.distributed's ``env://`` rendezvous with
  ``TORCHELASTIC_USE_AGENT_STORE``, as torchrun's agent does: no port to pick) and starts each rank
  in a session of its own, so Ctrl-C reaches the launcher alone; it passes SIGINT/SIGTERM to every
  rank once, waits while they save their checkpoint, and exits 128 + the signal;
- every rank ends with the process that started it (:func:`die_with_parent`, also under a plain
  torchrun agent): a SIGKILLed launcher leaves no rank behind, and the one SIGTERM each rank then
  gets saves a checkpoint like any SIGTERM;
- a rank that dies (killed, crashed) ends the job: each survivor sees its collective break and says
  one line naming the dead rank (:class:`~stablenas.errors.RankDiedError`, exit 75); the launcher
  waits ``GRACE_S`` for that, then sends SIGTERM, then SIGKILL. When rank 0 (the run directory's
  writer) died, the launcher records the run as interrupted itself, and it says the line when no
  rank could.

Exit code: 0; 128 + the signal after a forwarded SIGINT/SIGTERM; 75 when a rank died; else the
first failing rank's code (rank 0 first).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .errors import EXIT_RANK_DIED

GRACE_S = 10.0  # after a rank's death: time for the survivors to stop on their own (then SIGTERM, SIGKILL)
PARENT_ENV = "STABLENAS_LAUNCHER_PID"  # a rank checks that its launcher is still its parent


def die_with_parent(poll_s: float = 0.25) -> None:
    """In a rank (a launcher set ``WORLD_SIZE`` > 1): send this process one SIGTERM when its parent
    (this launcher or torchrun's agent) ends, however it ends (SIGKILL included). A daemon thread
    watches the parent pid (``PR_SET_PDEATHSIG`` would fire when the parent's *thread* that started
    this process ends, which a launcher need not keep alive; and it is Linux only)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    want = os.environ.get(PARENT_ENV)
    parent = int(want) if want is not None else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stablenas-parent-watch", daemon=True).start()


def _signal_name(code: int) -> str:
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def run_ranks(argv: list[str], nproc: int, out: Path, resume: str) -> int:
    """Run ``stablenas <argv>`` as ``nproc`` ranks; the exit code of the job (module docstring).
    ``out``: the run directory rank 0 writes; ``resume``: the command that continues the run."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, nproc, True, wait_for_workers=False)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "WORLD_SIZE": str(nproc),
           "LOCAL_WORLD_SIZE": str(nproc), "TORCHELASTIC_USE_AGENT_STORE": "True", PARENT_ENV: str(os.getpid())}
    env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun: N ranks do not each take every core
    cmd = [sys.executable, "-m", "stablenas", "--", *argv]
    procs: list[subprocess.Popen] = []
    got: list[int] = []  # signals received, each passed to the ranks once
    started = False

    def forward(signum, frame):
        got.append(signum)
        if started:
            _kill(procs, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for r in range(nproc):
            procs.append(subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                          stdin=subprocess.DEVNULL, start_new_session=True))
        started = True
        for signum in got[:1]:  # arrived while the ranks were starting: to all of them at once
            _kill(procs, signum)
        codes, killed = _wait(procs)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for p in procs:  # only reached with ranks alive when the launcher itself failed
            if p.poll() is None:
                p.kill()
                p.wait()
    if got and any(codes):
        return 128 + got[0]
    died = {r: _signal_name(c) for r, c in enumerate(codes) if c < 0 and r not in killed}
    if not died:
        return next((c for c in codes if c), 0)
    what = "; ".join(f"rank {r} died ({how})" for r, how in died.items())
    if 0 in died:
        _record_death(out, procs[0].pid, f"{what}; resume with {resume}")
    if not any(c == EXIT_RANK_DIED for c in codes):  # no survivor could say it
        print(f"error: {what}; the last checkpoint is intact; resume with {resume}", file=sys.stderr, flush=True)
    return EXIT_RANK_DIED


def _kill(procs: list[subprocess.Popen], signum: int) -> set[int]:
    """Send ``signum`` to every rank still running; the ranks it reached."""
    sent = set()
    for r, p in enumerate(procs):
        if p.poll() is None:
            try:
                os.kill(p.pid, signum)
                sent.add(r)
            except ProcessLookupError:
                pass
    return sent


def _wait(procs: list[subprocess.Popen]) -> tuple[list[int], set[int]]:
    """Every rank's exit code; after the first failure, ``GRACE_S`` for the others to stop, then
    SIGTERM, then SIGKILL. Also returns the ranks the launcher had to stop that way."""
    deadline, escalation, killed = None, [signal.SIGTERM, signal.SIGKILL], set()
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes, killed
        now = time.monotonic()
        if deadline is None and any(c for c in codes):
            deadline = now + GRACE_S
        elif deadline is not None and now >= deadline and escalation:
            killed |= _kill(procs, escalation.pop(0))
            deadline = now + GRACE_S
        time.sleep(0.05)


def _record_death(out: Path, pid: int, reason: str) -> None:
    """Rank 0 died holding the run directory: record the run as interrupted with the reason (the
    directory's lock died with it), unless another process took the directory since."""
    from .errors import StablenasError
    from .runs.directory import RunDir

    rd = RunDir(out, kind="search", config_name="config.yaml")
    st = rd.read_status_file()
    if not st or st.get("state") != "running" or st.get("pid") != pid:
        return
    try:
        rd.lock.acquire(str(out))
    except StablenasError:
        return
    rd.end("interrupted", reason)


__all__ = ["GRACE_S", "die_with_parent", "run_ranks"]
