"""The bench result as a plain-text table (the JSON record has everything; this is the summary):
one row per measurement with each engine's median seconds and the same-run ratios, then the
presets, peak memory and scaling sections when they ran."""

from __future__ import annotations

from .options import ENGINES


def _fmt_s(d: dict | None) -> str:
    if not d or "median_s" not in d:
        return "-" if not d else ("error" if "error" in d else "-")
    return f"{d['median_s']:.3f}"


def _x(sp: dict, key: str) -> str:
    return (str(sp.get(key)) + "x") if sp and sp.get(key) is not None else "-"


def format_table(res: dict) -> str:
    """A plain-text table of the result; one per size for a several-size result."""
    if "sizes" in res:
        return "\n\n".join(format_table(r) for r in res["sizes"].values())
    t = res.get("timing", {})
    cur = res.get("curvature", {})
    lines = _header(res)
    lines += _timing_rows(t, cur)
    lines += _preset_rows(t.get("presets", {}))
    lines += _memory_rows(res.get("memory", {}))
    lines += _scaling_rows(res.get("scaling"))
    lines += [f"note: {n}" for n in res.get("notes", [])]
    return "\n".join(lines)


def _header(res: dict) -> list[str]:
    c = res["config"]
    env = res["environment"]
    return [f"stablenas bench [{c.get('size', 'custom')}]: space {c['space']}, {c['cells']} cells, "
            f"{c['channels']} channels, "
            f"batch {c['batch']}, input {c['input']}, {c['repeats']} repeats after {c['warmup']} warm-up; "
            f"device {env.get('device')}, {env['threads']} threads, torch {env['torch']}; "
            f"load1 {env['load1_start']} -> {env.get('load1_end')}",
            "",
            f"{'measurement':28s} {'fast s':>9s} {'plain s':>9s} {'speedup':>8s} {'paired':>7s} "
            f"{'plain-cl s':>10s} {'vs cl':>7s} {'paired':>7s} {'fast img/s':>10s} {'load1':>12s}"]


def _row(label: str, d: dict) -> str:
    f, p, sp = d.get("fast", {}), d.get("plain"), d.get("speedup", {})
    pc, spc = d.get("plain_cl"), d.get("speedup_vs_plain_cl", {})
    loads = f.get("load1") or []
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"
    return (f"{label:28s} {_fmt_s(f):>9s} {_fmt_s(p):>9s} {_x(sp, 'of_medians'):>8s} "
            f"{_x(sp, 'paired_median'):>7s} {_fmt_s(pc):>10s} {_x(spc, 'of_medians'):>7s} "
            f"{_x(spc, 'paired_median'):>7s} {f.get('images_per_s', '-')!s:>10s} {load:>12s}")


def _timing_rows(t: dict, cur: dict) -> list[str]:
    lines = [_row(label, t[key]) for key, label in (("first_order", "first-order iteration"),
                                                     ("second_order", "second-order iteration")) if key in t]
    if "second_over_first" in t:
        so = t["second_over_first"]
        lines.append(f"{'second / first order':28s} {str(so['fast']['of_medians']) + 'x':>9s} "
                     f"{(str(so['plain']['of_medians']) + 'x') if 'plain' in so else '-':>9s}")
    if "lambda_max" in cur:
        lines.append(_row("lambda_max (Lanczos)", cur["lambda_max"]))
    lines += _curvature_rows(cur)
    return lines + _cuda_peaks(t, cur)


def _curvature_rows(cur: dict) -> list[str]:
    lines = []
    if "exact_hessian" in cur:
        e = cur["exact_hessian"]
        if "fast" in e:
            p = e.get("plain", {})
            ps = p.get("seconds", p.get("seconds_extrapolated"))
            lines.append(f"{'exact Hessian':28s} {e['fast']['seconds']:>9.3f} "
                         f"{(f'{ps:.1f}' + ('*' if 'seconds_extrapolated' in p else '')) if ps else '-':>9s} "
                         f"{(str(e.get('speedup')) + 'x') if e.get('speedup') else '-':>8s}")
        else:
            lines.append(f"{'exact Hessian':28s} {e.get('error', '-')}")
    if "lambda_max_vs_exact" in cur:
        lv = cur["lambda_max_vs_exact"]
        lines.append(f"lambda_max vs exact top eigenvalue: relative error {lv['relative_error']:.2e}, "
                     f"time fraction {lv['time_fraction']:.3f}")
    return lines


def _cuda_peaks(t: dict, cur: dict) -> list[str]:
    peaks = [(label, d) for label, d in (("first order", t.get("first_order")), ("second order", t.get("second_order")),
                                         ("lambda_max", cur.get("lambda_max"))) if d]
    if not any("cuda_peak_mb" in d.get("fast", {}) for _, d in peaks):
        return []
    per = "; ".join(f"{label} " + ", ".join(f"{e} {d[e]['cuda_peak_mb']} (+{d[e]['cuda_growth_mb']})"
                                            for e in ENGINES if "cuda_peak_mb" in d.get(e, {}))
                    for label, d in peaks)
    return [f"peak CUDA memory (torch.cuda.max_memory_allocated, MB; growth over the call's start): {per}"]


def _preset_rows(presets: dict) -> list[str]:
    if not presets:
        return []
    lines = ["", f"{'preset':28s} {'fast s':>9s} {'vs 1st-order':>12s} {'img/s':>9s}  methods"]
    for name, d in presets.items():
        if "skipped" in d:
            lines.append(f"{name:28s} skipped: {d['skipped']}")
            continue
        vs = d.get("vs_first_order", {}).get("of_medians")
        lines.append(f"{name:28s} {_fmt_s(d):>9s} {(str(vs) + 'x') if vs else '-':>12s} "
                     f"{d.get('images_per_s', '-')!s:>9s}  {', '.join(d.get('methods', []))}"
                     + (f"  error: {d['error']}" if d.get("error") else ""))
    return lines


def _memory_rows(mem: dict) -> list[str]:
    if not mem:
        return []
    lines = ["", f"{'peak memory (growth, MB)':28s} {'fast':>9s} {'plain':>9s} {'fast/plain':>10s} "
                 f"{'plain-cl':>9s} {'fast/cl':>8s}"]
    for what, d in mem.items():
        f, p, pc = d.get("fast", {}), d.get("plain", {}), d.get("plain_cl", {})
        lines.append(f"{what:28s} {f.get('growth_mb', f.get('error', '-'))!s:>9s} "
                     f"{p.get('growth_mb', p.get('error', '-'))!s:>9s} "
                     f"{d.get('fast_over_plain', '-')!s:>10s} "
                     f"{pc.get('growth_mb', pc.get('error', '-'))!s:>9s} "
                     f"{d.get('fast_over_plain_cl', '-')!s:>8s}")
    return lines


def _scaling_rows(rows: list[dict] | None) -> list[str]:
    if not rows:
        return []
    lines = ["", f"{'scaling (fast, 1st order)':28s} {'GFLOP fwd':>9s} {'work x':>7s} {'time x':>7s} "
                 f"{'time/work':>9s}"]
    for s in rows:
        lines.append(f"{s['variant']:28s} {s['forward_gflop']:>9.3f} {s['work_ratio']:>7.2f} "
                     f"{s['time_ratio']:>7.2f} {s['time_per_work']:>9.2f}")
    return lines
