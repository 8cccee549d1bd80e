"""Budgets hold under fan-out: a call reserves its estimate before it starts and reconciles after,
so concurrent members cannot all pass a budget that only one of them fits in."""

from __future__ import annotations

from legato import Budget, Llm, Parallel, Pipeline, Vote


def test_a_wide_vote_cannot_overspend_a_small_token_budget(legato, fake):
    vote = Parallel(id="crowd", vote=Vote(n=40, step=Llm(id="voter", model="small",
                                                         prompt="Say yes")),
                    aggregate={"method": "majority"})
    run = legato.wait(legato.submit(Pipeline(name="frugal", budget=Budget(max_tokens=30),
                                             steps=[vote]), {}), timeout=60)
    assert run.status == "failed"
    assert "budget exceeded" in run.error, run.error
    calls = fake.stats()["requests"]
    assert 1 <= calls <= 8, calls  # a few ~6-token calls fit in 30; without reservations all 40
    members = [s for s in legato.steps(run.id) if s.path.startswith("crowd/voter[")]
    used = sum(s.usage.total_tokens for s in members)
    assert used <= 30 + max(s.usage.total_tokens for s in members), used
    refused = [s for s in members if s.error_type == "BudgetExceeded"]
    assert len(refused) >= 40 - calls
    assert "reserved by calls in flight" in refused[0].error, refused[0].error
