"""What ``squeezelab sweep`` prints: the plan and a line per finished trial on stderr, the report on stdout."""

from __future__ import annotations

import json
import sys

from core.store import ResultRow
from core.sweep import SweepReport, SweepSpec, TrialEvent, short_label, trial_params
from core.sweep.cost import CostEstimate


def _mb(value: int | None) -> str:
    return f"{value / 1e6:.2f} MB" if value is not None else "-"


def _ppl(row: ResultRow) -> str:
    if row.perplexity is None:
        return "-"
    interval = ""
    if row.perplexity_ci_low is not None and row.perplexity_ci_high is not None:
        interval = f" [{row.perplexity_ci_low:.3f}, {row.perplexity_ci_high:.3f}]"
    return f"{row.perplexity:.3f}{interval}"


def print_plan(spec: SweepSpec, cost: CostEstimate, backend: str) -> None:
    """Before anything runs: what the sweep is and what it should cost."""
    what = "grid" if spec.search is None else f"{spec.search.sampler} search of {spec.search.trials} trials"
    print(f"sweep {spec.name}: {what} on {spec.base_recipe.model}, backend {backend}", file=sys.stderr)
    print(f"  to run: {cost.describe()}", file=sys.stderr, flush=True)


def trial_printer(enabled: bool):
    """A callback printing one line per finished trial (None when quiet)."""
    if not enabled:
        return None

    def show(event: TrialEvent) -> None:
        row = event.row
        outcome = (f"ppl {_ppl(row)}  size {_mb(row.size_bytes)}  {row.wall_s or 0:.1f} s" if row.status == "ok"
                   else f"{row.status}: {row.error}")
        print(f"  [{event.finished}/{event.planned}] {event.trial.label():<40} {outcome}  {row.id}", file=sys.stderr,
              flush=True)

    return show


def _table(report: SweepReport) -> list[str]:
    extra = [m for m in report.objectives if m not in ("perplexity", "size_bytes")]
    width = max([len("perplexity"), *(len(_ppl(row)) for row in report.trials)])
    header = f"    {'id':<22}  {'perplexity':<{width}} {'size':>10}" + "".join(f" {m:>14}" for m in extra)
    lines = [header + "  parameters"]
    pareto, acceptable = set(report.pareto), set(report.acceptable)
    for row in sorted(report.trials, key=lambda r: (r.status != "ok", r.size_bytes or 0, r.perplexity or 0)):
        marks = ("*" if row.id in pareto else " ") + ("+" if row.id in acceptable else " ")
        figures = "".join(f" {_show(getattr(row, m)):>14}" for m in extra)
        status = "" if row.status == "ok" else f"  ({row.status}: {row.error})"
        lines.append(f"{marks}  {row.id:<22}  {_ppl(row):<{width}} {_mb(row.size_bytes):>10}{figures}  "
                     f"{short_label(trial_params(row))}{status}")
    return lines


def _show(value: object) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def print_report(report: SweepReport, as_json: bool) -> None:
    """The report: one JSON object, or the table with the front, the constraint and the best trial."""
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    base = report.base
    details = (base.details if base is not None else None) or {}
    protocol = f"{details.get('text', '?')}, seqlen {details.get('seqlen', '?')}, {details.get('windows', '?')} windows"
    lines = [f"sweep {report.name}: {len(report.trials)} trials ({protocol})"]
    if base is not None:
        lines.append(f"base model: perplexity {_ppl(base)}, size {_mb(base.size_bytes)}  ({base.id})")
    lines += [f"constraint: {c.describe(report.base_value(c.metric))}" for c in report.constraints]
    lines += ["", *_table(report), "",
              f"* on the Pareto front ({', '.join(f'{m} {s}' for m, s in report.objectives.items())}); "
              "+ acceptable under the constraint"]
    if report.best is not None:
        best = report.row(report.best)
        lines.append(f"best acceptable (smallest): {best.id}  {short_label(trial_params(best))}  "
                     f"perplexity {_ppl(best)}, size {_mb(best.size_bytes)}")
    else:
        lines.append("best acceptable: none (no finished trial meets the constraint)")
    run = report.run
    if run:
        lines.append(f"this run: {run['ran']} trial(s) run ({run['failed']} failed), {run['skipped']} already done "
                     f"and skipped, {run['left']} left" + (f" (stopped at {run['stopped']}; run the same command "
                                                          "again to go on)" if run.get("stopped") else ""))
    print("\n".join(lines))
