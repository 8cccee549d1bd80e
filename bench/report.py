"""The results as a table (printed), a chart (PNG) and the measured part of docs/benchmarks.md.

docs/benchmarks.md keeps whatever is outside the markers `<!-- bench:begin -->` and
`<!-- bench:end -->` (the hand-written analysis); only the part between them is regenerated.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.measure import Results, Row

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _fmt(x: float) -> str:
    if x != x:
        return "—"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.0f}"


def _met(row: Row) -> str:
    return {True: "yes", False: "**no**", None: ""}[row.met]


def table(res: Results) -> str:
    head = ("| measurement | unit | Legato (median) | baseline (median) | baseline | ratio | "
            "target | met |\n|---|---|---:|---:|---|---:|---|---|")
    lines = [head]
    for r in res.rows:
        lines.append(f"| {r.what} | {r.unit} | {_fmt(r.legato_median)} | "
                     f"{_fmt(r.baseline_median)} | {r.baseline_name} | "
                     f"{_fmt(r.ratio)} ({r.ratio_name}) | {r.target_text} | {_met(r)} |")
    return "\n".join(lines)


def every_run(res: Results) -> str:
    lines = ["| measurement | Legato, every run | baseline, every run | notes |",
             "|---|---|---|---|"]
    for r in res.rows:
        lines.append(f"| {r.key} | {', '.join(_fmt(v) for v in r.legato)} | "
                     f"{', '.join(_fmt(v) for v in r.baseline)} | {r.notes} |")
    return "\n".join(lines)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(redis_version: str) -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{mem_kb / 2**20:.1f} GiB"
    except OSError:
        memory = "?"
    return {
        "nproc": str(os.cpu_count()),
        "memory": memory,
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "celery": _version("celery"),
        "kombu": _version("kombu"),
        "redis-py": _version("redis"),
        "redis server": redis_version,
        "httpx": _version("httpx"),
        "langgraph": _version("langgraph"),
    }


def _breakdown(res: Results) -> str:
    rt = res.details.get("rt_breakdown") or {}
    if not rt:
        return ""
    lines = ["| client commands (last run) | Legato | raw Celery |", "|---|---:|---:|"]
    lt, lc = rt["legato"]
    raw_t, rc = rt["raw"]
    commands = sorted(set(lt.by_command) | set(raw_t.by_command),
                      key=lambda k: -(lt.by_command[k] + raw_t.by_command[k]))
    lines += [f"| {k} | {lt.by_command[k] / lc:.2f} | {raw_t.by_command[k] / rc:.2f} |"
              for k in commands]
    lines += [f"| *round trips* | {lt.round_trips / lc:.2f} | {raw_t.round_trips / rc:.2f} |",
              f"| *all client commands* | {lt.commands / lc:.2f} | {raw_t.commands / rc:.2f} |",
              f"| *commands run inside Lua* | {lt.lua_calls / lc:.2f} | "
              f"{raw_t.lua_calls / rc:.2f} |"]
    return "Per step (÷ jobs × steps), producer and worker together:\n\n" + "\n".join(lines)


def _setup(res: Results) -> str:
    c = res.config
    d = res.details
    lines = [
        f"- Repetitions: {c.runs} per measurement, median reported; Legato and its baseline "
        "interleaved in every repetition.",
        f"- Workers: one process each, Celery **threads** pool, concurrency **{c.concurrency}** "
        f"(memory: {c.mem_calls}); Legato `legato worker` on legato.control/llm/tools with its "
        "defaults (model calls on its aiohttp event-loop transport, chain segments run whole on "
        "that loop by its threads pool, vote batches, its Redis broker transport), raw Celery "
        "`celery -A bench.rawapp worker` (same "
        "Celery settings as workers/app.py: JSON, late acks, prefetch 1, task events on; stock "
        "kombu transport and Redis result backend; sync httpx). One private redis-server: "
        "Legato in db 0, raw in db 1.",
        "- Model: the fake OpenAI-compatible server (one asyncio process), latency scripted "
        "through `PUT /_fake/script`.",
        f"- Sizes: overhead {c.chains_per_run} chains of {c.chain_steps} steps per run; "
        f"throughput {c.jobs} jobs × {c.steps} calls at {c.latency_ms:g} ms; "
        f"fan-out {c.fanout} at {c.fanout_latency_ms:g} ms; "
        f"round trips {c.rt_jobs} jobs; memory {c.mem_calls} calls at {c.mem_latency_ms:g} ms.",
    ]
    mif = d.get("max_in_flight") or {}
    if mif:
        lines.append(f"- Calls in flight the fake model saw during 2 (max per run): Legato "
                     f"{mif.get('legato')}, raw {mif.get('raw')}.")
    split = d.get("cpu_split") or {}
    for who, runs in split.items():
        u, s, w = (sum(x[i] for x in runs) for i in range(3))
        lines.append(f"- Worker CPU during 2, {who}: user {u:.1f} s + system {s:.1f} s over "
                     f"{w:.1f} s wall ({(u + s) / w:.0%} of one core).")
    for key, client in (("peer_runs", "httpx"), ("peer_aiohttp_runs", "aiohttp")):
        for p in d.get(key, [])[:1]:
            lines.append(f"- LangGraph process on {client} (first run): CPU user "
                         f"{p['cpu_user']:.1f} s + system {p['cpu_system']:.1f} s over "
                         f"{p['elapsed']:.1f} s; peak RSS {p['max_rss'] / 2**20:.0f} MiB.")
    if "load_before" in d:
        before = ", ".join(f"{x:.2f}" for x in d["load_before"])
        after = ", ".join(f"{x:.2f}" for x in d.get("load_after", ()))
        lines.append(f"- Load average (1, 5, 15 min) before phase one: {before}; after: {after} "
                     "(anything else running on the machine shows here).")
    failures = {k: v for k, v in (d.get("failures") or {}).items() if v}
    lines.append(f"- Failed jobs: {failures or 'none'}.")
    return "\n".join(lines)


def markdown(res: Results, redis_version: str, chart: str | None) -> str:
    info = machine(redis_version)
    mach = ", ".join(f"{k} {v}" for k, v in info.items())
    parts = [
        BEGIN,
        "## Latest run",
        "",
        f"Machine and versions: {mach}.",
        "",
        _setup(res),
        "",
        table(res),
        "",
        every_run(res),
        "",
        _breakdown(res),
        "",
    ]
    if chart:
        parts += [f"![benchmarks]({chart})", ""]
    parts.append(END)
    return "\n".join(parts)


def write_markdown(path: Path, block: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the block between `begin` and `end` in `path` (append it if there is none)."""
    if path.exists():
        text = path.read_text()
        if begin in text and end in text:
            text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text,
                          flags=re.S)
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    else:
        text = "# Benchmarks\n\nGenerated by `make bench` (`python -m bench`).\n\n" + block + "\n"
    path.write_text(text)


def chart(res: Results, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in res.rows if r.key != "cpu"]
    cols = 3
    nrows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(13, 3.6 * nrows))
    flat: list[Any] = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, r in zip(flat, rows, strict=False):
        names = ["Legato", _short(r.baseline_name)]
        values = [r.legato_median, r.baseline_median]
        bars = ax.bar(names, values, color=["#3a6ea5", "#b0b0b0"])
        for bar, runs in zip(bars, (r.legato, r.baseline), strict=True):
            x = bar.get_x() + bar.get_width() / 2
            ax.scatter([x] * len(runs), runs, color="black", s=8, zorder=3)
        tag = f"ratio {_fmt(r.ratio)}" + (f", target {r.target_text}" if r.target_text else "")
        color = "darkred" if r.met is False else "darkgreen" if r.met else "black"
        ax.set_title(_wrap(r.what) + "\n" + tag, fontsize=9, color=color)
        ax.set_ylabel(r.unit, fontsize=8)
        ax.tick_params(labelsize=8)
    for ax in flat[len(rows):]:
        ax.axis("off")
    fig.suptitle("Legato vs baselines (medians; dots are single runs)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _short(name: str) -> str:
    return name.split("(")[0].split("=")[0].strip()[:28]


def _wrap(text: str, width: int = 48) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line])


def redis_version(port: int) -> str:
    try:
        out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "server"],
                             capture_output=True, text=True, timeout=5).stdout
        m = re.search(r"redis_version:(\S+)", out)
        return m.group(1) if m else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"
