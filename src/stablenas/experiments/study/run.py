"""Running a study: the plan check, the queue of units still to run, records in and out, the summary.

A study directory resumes after any kill: finished units are skipped, an interrupted unit resumes its
own run directories, and ``study.json`` refuses a protocol that would change finished results.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from ...errors import RunDirError
from ...runs.backends import Backend, LocalBackend
from .protocol import StudyProtocol, protocol_diff
from .records import export_record, import_record
from .summary import fmt_value, summarise
from .units import Unit, run_unit, study_units

__all__ = ["run_study", "summary_only"]


def _queue(units: list[Unit], out: Path, rec: Path | None, warn: Callable[[str], None]) -> tuple[list[Unit], int]:
    """The units still to run and how many came from ``rec``; a unit finished here gets its missing record."""
    todo, imported = [], 0
    for u in units:
        udir = out / "runs" / u.name
        if (udir / "result.json").exists():
            if rec is not None and not (rec / u.name / "result.json").exists():
                export_record(rec, udir, u.name)  # finished here but its record not written (a stopped study)
            continue
        if rec is not None and import_record(rec, u, udir, warn):
            imported += 1
            continue
        todo.append(u)
    return todo, imported


def _on_done(out: Path, rec: Path | None, total: int, log: Callable[[str], None]) -> Callable[[dict], None]:
    """What follows each finished unit: its record written, one log line (a failed unit: the reason)."""
    start = time.perf_counter()
    count = 0

    def done(r: dict) -> None:
        nonlocal count
        count += 1
        if r.get("failed"):
            log(f"[{count}/{total}] {r['name']}: FAILED ({r['failed']}); the study goes on")
            return
        if rec is not None:
            export_record(rec, out / "runs" / r["name"], r["name"])
        log(f"[{count}/{total}] {r['name']}: share {fmt_value(r['share_normal'])}, test acc "
            f"{fmt_value(r.get('test_acc'), 4)} ({(time.perf_counter() - start) / 60:.1f} min)")

    return done


def run_study(protocol: StudyProtocol, out_dir: str | Path, *, backend: Backend | None = None,
              records: str | Path | None = None, threads: int | None = None, max_units: int | None = None,
              log: Callable[[str], None] | None = None, warn: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) every unit of ``protocol`` under ``out_dir`` and write the summary; returns it.

    ``records``: a directory of finished units' small records, read first (matching ones are not
    run again) and written after every unit; ``warn`` (default ``log``) names each record left out.
    ``max_units`` stops after that many units run in this call (time-sliced sittings); the summary
    then covers the finished ones, marked partial."""
    from ...runs.records import check_plan, write_plan

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    warn = warn or log
    out = Path(out_dir)
    if records is not None and Path(records).exists() and not Path(records).is_dir():
        raise RunDirError(f"--records {records} is a file; it names a directory of unit records (one folder per "
                          "unit, e.g. studies/cpu-collapse)")
    backend = backend or LocalBackend()
    if threads is None:
        threads = backend.threads_per_task()
    units = study_units(protocol)  # validates every config before anything is written
    plan_file = out / "study.json"
    check_plan(plan_file, protocol.to_dict(), protocol_diff, what="study", noun="a different protocol")
    out.mkdir(parents=True, exist_ok=True)
    write_plan(plan_file, protocol.to_dict())
    rec = Path(records) if records is not None else None
    todo, imported = _queue(units, out, rec, warn)
    here = len(units) - len(todo) - imported
    if max_units is not None:
        todo = todo[:max_units]
    log(f"study {protocol.name}: {len(units)} units, {here} done here, {imported} from records, {len(todo)} to run "
        f"now ({backend.name} backend)")
    tasks = [(u.name, u.search, u.train, str(out / "runs" / u.name), threads, protocol.discretization_batches,
              u.at_epochs) for u in todo]
    backend.run(run_unit, tasks, _on_done(out, rec, len(todo), log), key=lambda t: t[0], log=log)
    summary = summarise(protocol, out)
    log(f"study: wrote {out / 'table.md'}, {out / 'results.json'}")
    return summary


def summary_only(protocol: StudyProtocol, out_dir: str | Path, records: str | Path | None = None, *,
                 warn: Callable[[str], None] | None = None) -> dict:
    """``study --summary``: rewrite the summary of the finished units, running nothing. With
    ``records``: of the records too (imported into ``out_dir`` first, as :func:`run_study` does);
    without: only of a directory that holds this study (the protocol check of a resume: a table
    never mixes units of another protocol, and no other directory gets a table written into it)."""
    from ...runs.records import check_plan

    if records is not None:
        if not Path(records).exists():
            raise RunDirError(f"--records {records}: no such directory of unit records (one folder per unit, "
                              "e.g. studies/cpu-collapse)")
        return run_study(protocol, out_dir, records=records, max_units=0, log=lambda _m: None, warn=warn)
    plan = Path(out_dir) / "study.json"
    if not plan.is_file():
        raise RunDirError(f"--summary: {out_dir} holds no study (no study.json); run the study there first, or "
                          "pass --records DIR to summarise recorded units into a new directory")
    check_plan(plan, protocol.to_dict(), protocol_diff, what="study", noun="a different protocol")
    return summarise(protocol, out_dir)
