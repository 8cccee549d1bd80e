"""A run's event stream folded into what a watcher shows (`legato watch`): per step, the text
of the model call being written or kept, how many attempts were thrown away, and its status.

The fold follows the rules of events.py: a path shows its newest (attempt, call); an aborted
call's text is dropped (counted, with its reason); a committed call's text is the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.text import Text

from legato.events import (
    AttemptAborted,
    AttemptCommitted,
    AttemptStarted,
    Delta,
    Event,
    RunFinished,
    StepFinished,
    StepStarted,
)
from legato.report import clean

_STYLE = {"running": "cyan", "succeeded": "green", "failed": "red", "retrying": "yellow"}


@dataclass
class StepView:
    path: str
    status: str = "running"
    model: str = ""
    call: tuple[int, int] = (0, 0)  # (attempt, call) shown
    text: str = ""
    committed: bool = False
    aborted: int = 0
    last_reason: str = ""
    error: str | None = None


@dataclass
class RunView:
    steps: dict[str, StepView] = field(default_factory=dict)
    status: str | None = None  # the run's, once it finished
    error: str | None = None
    last_id: str | None = None

    def step(self, path: str) -> StepView:
        view = self.steps.get(path)
        if view is None:
            view = self.steps[path] = StepView(path)
        return view

    def apply(self, event: Event) -> None:
        self.last_id = event.id or self.last_id
        if isinstance(event, RunFinished):
            self.status, self.error = event.status, event.error
            return
        view = self.step(event.path)
        if isinstance(event, StepStarted):
            view.status = "running"
        elif isinstance(event, StepFinished):
            view.status, view.error = event.status, event.error
        elif isinstance(event, AttemptStarted):
            view.call, view.model, view.text, view.committed = \
                (event.attempt, event.call), event.model, "", False
        elif isinstance(event, Delta):
            if (event.attempt, event.call) == view.call:
                view.text += event.text
        elif isinstance(event, AttemptAborted):
            view.aborted += 1
            view.last_reason = event.reason
            if (event.attempt, event.call) == view.call and not view.committed:
                view.text = ""
        elif isinstance(event, AttemptCommitted) and (event.attempt, event.call) == view.call:
            view.committed = True

    def render(self) -> RenderableType:
        parts: list[RenderableType] = []
        for view in self.steps.values():
            head = Text()
            head.append(clean(view.path, newlines=False), style="bold")
            head.append(f"  {view.status}", style=_STYLE.get(view.status, ""))
            if view.model:
                head.append(f"  {clean(view.model, newlines=False)}", style="dim")
            if view.aborted:
                head.append(f"  [{view.aborted} attempt{'s' if view.aborted > 1 else ''} "
                            f"aborted: {clean(view.last_reason, newlines=False)[:80]}]",
                            style="yellow")
            if view.committed:
                head.append("  (kept)", style="green")
            parts.append(head)
            if view.text:
                parts.append(Text(clean(view.text), style="" if view.committed else "italic"))
            if view.error and view.status == "failed":
                parts.append(Text(clean(view.error), style="red"))
        if self.status is not None:
            line = Text(f"run {self.status}", style=_STYLE.get(self.status, "bold"))
            if self.error:
                line.append(f": {clean(self.error, newlines=False)}")
            parts.append(line)
        return Group(*parts)
