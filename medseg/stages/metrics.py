"""Pipeline stage ``evaluate``: score a cohort and write the report into the stage's folder.

YAML::

    - stage: evaluate
      params: {pred: out/predict, ref: data/labels, labels: [1, 2], label_names: {1: anterior},
               nsd_tolerance_mm: 1.0, workers: 2, metrics: [dice, hd95, assd], empty_reference: score,
               exclude_failed: false, pixel_spacing_mm: null}
"""

from __future__ import annotations

from typing import Any

from medseg.stages.base import Context, register_stage


@register_stage("evaluate")
def evaluate_stage(ctx: Context, pred: str | None = None, ref: str | None = None, labels: Any = None,
                   label_names: Any = None, nsd_tolerance_mm: Any = 1.0, workers: int = 1,
                   mode: str = "surface-distance", metrics: Any = None, empty_reference: str = "score",
                   exclude_failed: bool = False, pixel_spacing_mm: Any = None) -> dict[str, Any]:
    """Score ``pred`` (default: the previous volume stage's output) against ``ref``."""
    from medseg.errors import ConfigError
    from medseg.metrics.catalog import parse_metrics
    from medseg.metrics.params import parse_label_names, parse_labels, parse_pixel_spacing, parse_tolerances
    from medseg.report.evaluation import run_evaluation

    src = ctx.resolve_input(pred) if pred else ctx.results.get("_last_volume_dir")
    if src is None or not ref:
        raise ConfigError("stage 'evaluate': give 'pred' and 'ref' (files or folders)", code="bad_params")
    lab = parse_labels(labels)
    result, paths = run_evaluation(src, ctx.resolve_input(ref), ctx.out(ctx.stage_name or "evaluate"), labels=lab,
                                   label_names=parse_label_names(label_names, lab),
                                   tolerance_mm=parse_tolerances(nsd_tolerance_mm, lab), mode=mode,
                                   workers=int(workers), progress=False, metrics=parse_metrics(metrics),
                                   empty_reference=empty_reference,
                                   failed="exclude" if exclude_failed else "worst",
                                   pixel_spacing_mm=parse_pixel_spacing(pixel_spacing_mm))
    return {"report": str(paths["report"]), "metrics_csv": str(paths["metrics_csv"]),
            "summary": str(paths["summary"]), "cases": len(result.cases), "failed": dict(result.failed)}
