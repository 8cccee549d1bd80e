"""Evals: run a pipeline's baseline and its arms (per-step overrides) over a dataset or recorded
runs, answering unchanged calls from the recorded ones, and score them (`legato eval`)."""

from legato.evals.arms import BASELINE, Arm, apply, load_arm
from legato.evals.dataset import Item, from_runs, load_dataset
from legato.evals.report import as_dict, regressions, render_html, table
from legato.evals.runner import ArmResult, ItemResult, clean, run_eval
from legato.evals.scorers import Scorer, Verdict, parse_scorer

__all__ = ["BASELINE", "Arm", "ArmResult", "Item", "ItemResult", "Scorer", "Verdict", "apply",
           "as_dict", "clean", "from_runs", "load_arm", "load_dataset", "parse_scorer",
           "regressions", "render_html", "run_eval", "table"]
