"""Running an eval: the baseline and every arm over the same items, as ordinary Legato runs.

Every run is submitted with the response cache on (`read-write`), the baseline's first and
waited for, then all the arms' at once. A model call an arm leaves unchanged — same alias,
prompt, params, and the same upstream outputs, so the same request — is then answered from the
recorded call: no model call, no cost, no budget. Only the steps an arm changed, and those whose
inputs change because of them, call a model. What a cached call saved is in its record
(`ModelAttempt.saved_usage`, `saved_seconds`), so cost and latency are compared as configured:
what each arm's calls cost and took when they were made, whichever run made them.

Every run (and every judge run) is added to the eval's set, `<p>:eval:<id>:runs`: found by
`--from-runs eval=ID`, deleted by `legato eval --clean ID`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from legato.client import check_input
from legato.errors import InputError, RunNotFound
from legato.evals.arms import BASELINE, Arm, apply
from legato.evals.dataset import Item
from legato.evals.scorers import Scorer, Verdict, judge_pipeline, verdict_of
from legato.loader import load_models

if TYPE_CHECKING:
    from legato.client import Legato
    from legato.envelope import RunRecord
    from legato.spec import Pipeline
    from legato.store import RunStore


@dataclass
class ItemResult:
    source: str
    run_id: str
    status: str
    output: Any
    error: str | None
    calls_made: int
    calls_saved: int
    cost: float  # as configured: the calls made, plus what the recorded ones had cost
    spent: float  # what this run's calls cost now
    seconds: float  # model time as configured: its calls', the recorded ones' as recorded
    verdict: Verdict | None = None


@dataclass
class ArmResult:
    name: str
    spec_hash: str
    items: list[ItemResult]

    def _mean(self, values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    @property
    def score(self) -> float:
        return self._mean([i.verdict.score if i.verdict else 0.0 for i in self.items])

    @property
    def pass_rate(self) -> float:
        return self._mean([1.0 if i.verdict and i.verdict.passed else 0.0 for i in self.items])

    @property
    def calls_made(self) -> int:
        return sum(i.calls_made for i in self.items)

    @property
    def calls_saved(self) -> int:
        return sum(i.calls_saved for i in self.items)

    @property
    def cost(self) -> float:
        return sum(i.cost for i in self.items)

    @property
    def spent(self) -> float:
        return sum(i.spent for i in self.items)

    @property
    def seconds(self) -> float:
        return sum(i.seconds for i in self.items)


EVAL_TAG = "eval"  # every run an eval submits is tagged eval=<its id>


def new_eval_id() -> str:
    return "ev" + uuid.uuid4().hex[:14]


def arm_specs(legato: Legato, pipeline: str | Pipeline,
              arms: list[Arm]) -> list[tuple[str, Pipeline]]:
    """(name, spec) for the baseline and each arm, cache on, every one checked first."""
    base = legato.load(pipeline)
    models = load_models(legato.settings.models_path)
    if not isinstance(pipeline, str):  # aliases given with the object win (unused ones too)
        models.update(pipeline.models)
    named = [(BASELINE, base), *((arm.name, apply(base, arm, models)) for arm in arms)]
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise InputError(f"two arms are named {next(n for n in names if names.count(n) > 1)!r}")
    return [(name, spec.model_copy(update={"cache": "read-write"})) for name, spec in named]


def run_eval(legato: Legato, pipeline: str | Pipeline, items: list[Item], arms: list[Arm],
             scorer: Scorer, *, eval_id: str | None = None,
             timeout: float = 600.0) -> tuple[str, list[ArmResult]]:
    """Run the baseline and the arms over `items`, score them; (eval id, results, baseline
    first). Bad input (a spec, an arm, an item, a missing `expected`) raises before any run."""
    specs = arm_specs(legato, pipeline, arms)
    for item in items:
        for name, spec in specs:
            try:
                check_input(spec, item.input, max_bytes=legato.settings.max_input_bytes)
            except InputError as exc:
                raise InputError(f"{item.source}: {exc} (arm {name})") from None
        if scorer.needs_expected and not item.has_expected:
            raise InputError(f"{item.source}: scorer {scorer.name} needs `expected`, and this "
                             f"item has none")
    judge = judge_pipeline(scorer.judge, load_models(legato.settings.models_path)) \
        if scorer.judge else None
    eval_id = eval_id or new_eval_id()
    store = legato.store
    deadline = time.monotonic() + timeout

    def submit(spec: Pipeline, value: Any) -> str:
        run_id = legato.submit(spec, value, tags={EVAL_TAG: eval_id})
        store.add_eval_run(eval_id, run_id)
        return run_id

    def wait_all(ids: list[str]) -> list[RunRecord]:
        return [legato.wait(i, timeout=max(1.0, deadline - time.monotonic())) for i in ids]

    results: list[ArmResult] = []
    (_, base), rest = specs[0], specs[1:]
    waves = [[(BASELINE, base)], rest]  # the baseline records first; the arms reuse its calls
    for wave in waves:
        sent = [(name, spec, [submit(spec, item.input) for item in items]) for name, spec in wave]
        for name, spec, ids in sent:
            runs = wait_all(ids)
            results.append(ArmResult(name, spec.content_hash(), [
                _item_result(store, item, run) for item, run in zip(items, runs, strict=True)]))
    if judge is None:
        for arm in results:
            for item, result in zip(items, arm.items, strict=True):
                result.verdict = scorer.score(result.output, item) \
                    if result.status == "succeeded" else _failed(result)
    else:
        _judge(judge, scorer, items, results, submit, wait_all)
    return eval_id, results


def _failed(result: ItemResult) -> Verdict:
    return Verdict(0.0, False, f"run {result.status}: {result.error}")


def _judge(judge: Pipeline, scorer: Scorer, items: list[Item], results: list[ArmResult],
           submit: Any, wait_all: Any) -> None:
    """One judge run per succeeded item of every arm, all at once."""
    asked: list[tuple[ItemResult, str]] = []
    for arm in results:
        for item, result in zip(items, arm.items, strict=True):
            if result.status != "succeeded":
                result.verdict = _failed(result)
                continue
            asked.append((result, submit(judge, {
                "rubric": scorer.rubric, "input": item.input, "output": result.output,
                "expected": item.expected if item.has_expected else None})))
    runs = wait_all([run_id for _, run_id in asked])
    for (result, _), run in zip(asked, runs, strict=True):
        result.verdict = verdict_of(run.output) if run.status == "succeeded" else \
            Verdict(0.0, False, f"judge run {run.id} {run.status}: {run.error}")


def _item_result(store: RunStore, item: Item, run: RunRecord) -> ItemResult:
    saved = saved_cost = seconds = 0.0
    for record in store.get_steps(run.id):
        for call in record.model_calls:
            seconds += sum(a.seconds for a in call.attempts or ())
            if call.cached and call.outcome == "ok":
                saved += 1
                saved_cost += call.saved_usage.cost if call.saved_usage else 0.0
                seconds += call.saved_seconds or 0.0
    return ItemResult(item.source, run.id, run.status, run.output, run.error,
                      calls_made=run.usage.calls, calls_saved=int(saved),
                      cost=run.usage.cost + saved_cost, spent=run.usage.cost, seconds=seconds)


def clean(store: RunStore, eval_id: str) -> tuple[int, int]:
    """Delete an eval's finished runs with every key of theirs, and the eval itself once none
    is left; (runs deleted, runs still unfinished and kept)."""
    gone = kept = 0
    for run_id in store.eval_runs(eval_id):
        try:
            if not store.get_run(run_id).done:
                kept += 1
                continue
        except RunNotFound:  # expired already: its entries go all the same
            pass
        store.delete_eval_run(eval_id, run_id)
        gone += 1
    if not kept:
        store.forget_eval(eval_id)
    return gone, kept
