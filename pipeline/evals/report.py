"""An eval's results: per arm, score, pass rate, calls made and saved, cost and model time with
their deltas vs the baseline, and per-item diffs — as a dict (the JSON file), a rich table and a
self-contained HTML page in `legato report --html`'s style."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from legato.evals.runner import ArmResult
from legato.html_report import CSS, escape


def regressions(arms: list[ArmResult], threshold: float) -> list[str]:
    """The arms whose score or pass rate is below the baseline's by more than `threshold`."""
    base = arms[0]
    return [a.name for a in arms[1:]
            if base.score - a.score > threshold + 1e-9
            or base.pass_rate - a.pass_rate > threshold + 1e-9]


def _delta(value: float, base: float) -> float | None:
    return (value - base) / base if base else None


def as_dict(eval_id: str, pipeline: str, scorer: str, arms: list[ArmResult],
            threshold: float) -> dict[str, Any]:
    base = arms[0]
    out: dict[str, Any] = {"eval": eval_id, "pipeline": pipeline, "scorer": scorer,
                           "threshold": threshold, "regressed": regressions(arms, threshold),
                           "arms": []}
    for arm in arms:
        items = []
        for mine, theirs in zip(arm.items, base.items, strict=True):
            verdict = mine.verdict
            items.append({
                "source": mine.source, "run": mine.run_id, "status": mine.status,
                "output": mine.output, "error": mine.error,
                "score": verdict.score if verdict else None,
                "passed": verdict.passed if verdict else None,
                "reason": verdict.reason if verdict else "",
                "calls_made": mine.calls_made, "calls_saved": mine.calls_saved,
                "cost": mine.cost, "seconds": round(mine.seconds, 6),
                "changed": _canonical(mine.output) != _canonical(theirs.output),
                "baseline_output": theirs.output,
                "baseline_score": theirs.verdict.score if theirs.verdict else None})
        out["arms"].append({
            "name": arm.name, "spec_hash": arm.spec_hash, "score": arm.score,
            "pass_rate": arm.pass_rate, "calls_made": arm.calls_made,
            "calls_saved": arm.calls_saved, "cost": arm.cost, "spent": arm.spent,
            "seconds": round(arm.seconds, 6), "cost_delta": _delta(arm.cost, base.cost),
            "latency_delta": _delta(arm.seconds, base.seconds),
            "items_changed": sum(1 for i in items if i["changed"]), "items": items})
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:+.0%}"


def table(report: dict[str, Any]) -> Table:
    t = Table(title=f"eval {report['eval']} · {report['pipeline']} · {report['scorer']}")
    for column in ("arm", "score", "pass rate", "changed", "calls made", "calls saved",
                   "cost", "Δ cost", "model time", "Δ latency"):
        t.add_column(column, justify="left" if column == "arm" else "right")
    for arm in report["arms"]:
        regressed = arm["name"] in report["regressed"]
        t.add_row(arm["name"] + (" (regressed)" if regressed else ""),
                  f"{arm['score']:.2f}", f"{arm['pass_rate']:.0%}",
                  f"{arm['items_changed']}/{len(arm['items'])}", str(arm["calls_made"]),
                  str(arm["calls_saved"]), f"{arm['cost']:.6g}", _pct(arm["cost_delta"]),
                  f"{arm['seconds']:.2f}s", _pct(arm["latency_delta"]),
                  style="red" if regressed else None)
    return t


def _out(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False,
                                                           default=str)


def _shown(item: dict[str, Any]) -> str:
    return _out(item["output"]) if item["error"] is None else str(item["error"])


def render_html(report: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr data-arm="{escape(a["name"])}"><td>{escape(a["name"])}</td>'
        f'<td>{a["score"]:.2f}</td><td>{a["pass_rate"]:.0%}</td>'
        f'<td>{a["items_changed"]}/{len(a["items"])}</td><td>{a["calls_made"]}</td>'
        f'<td>{a["calls_saved"]}</td><td>{a["cost"]:.6g}</td><td>{_pct(a["cost_delta"])}</td>'
        f'<td>{a["seconds"]:.2f}s</td><td>{_pct(a["latency_delta"])}</td>'
        f'<td>{"regressed" if a["name"] in report["regressed"] else ""}</td></tr>'
        for a in report["arms"])
    head = "".join(f"<th>{h}</th>" for h in (
        "arm", "score", "pass rate", "changed", "calls made", "calls saved", "cost", "Δ cost",
        "model time", "Δ latency", ""))
    sections = []
    for arm in report["arms"][1:]:
        items = "".join(
            f'<section class="step" data-arm="{escape(arm["name"])}" '
            f'data-source="{escape(i["source"])}"><h3>{escape(i["source"])} · '
            f'{escape(str(i["baseline_score"]))} → {escape(str(i["score"]))}'
            f'{" · changed" if i["changed"] else ""}</h3><div class="facts"><span><b>run</b> '
            f'{escape(i["run"])}</span><span><b>calls</b> {i["calls_made"]} made, '
            f'{i["calls_saved"]} saved</span><span>{escape(i["reason"])}</span></div>'
            f'<div class="cols"><div><div class="label">baseline</div><pre>'
            f'{escape(_out(i["baseline_output"]))}</pre></div><div><div class="label">'
            f'{escape(arm["name"])}</div><pre>{escape(_shown(i))}'
            f'</pre></div></div></section>'
            for i in arm["items"])
        sections.append(f'<h2>{escape(arm["name"])} vs baseline</h2>{items}')
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<title>Legato eval {escape(report["eval"])} · {escape(report["pipeline"])}</title>'
        f'<style>{CSS}table{{border-collapse:collapse;background:#fff}}td,th{{border:1px '
        f'solid #dde1e6;padding:4px 10px;text-align:right}}td:first-child{{text-align:left}}'
        f'</style></head><body><h1>eval {escape(report["eval"])} · '
        f'{escape(report["pipeline"])}</h1><p class="meta">scorer {escape(report["scorer"])} · '
        f'regression threshold {report["threshold"]}</p><table id="arms"><tr>{head}</tr>{rows}'
        f'</table>{"".join(sections)}</body></html>\n')
