"""Pipeline stages ``predict`` and ``postprocess``.

YAML::

    stages:
      - stage: predict          # writes OUTPUT/predict/CASE.nii.gz + manifest.json (resumable)
        params: {model: hippocampus_unet, input: data/images, tta: false, overlap: 0.5,
                 batch_size: 4, device: auto, backend: auto}
      - stage: postprocess      # input: the previous volume stage's output by default
        params: {rules: {foreground: [{op: keep_largest}], 1: [{op: fill_holes}]}}
      - stage: evaluate         # pred: the previous volume stage's output by default
        params: {ref: data/labels}

Both stages return ``{"output": folder, ...}`` and make their folder the default input of the
next volume stage (``postprocess``, ``evaluate`` and the preprocessing stages).
"""

from __future__ import annotations

import logging
from typing import Any

from medseg.errors import ConfigError
from medseg.stages.base import Context, map_volumes, register_stage

log = logging.getLogger("medseg.inference")


@register_stage("predict")
def predict_stage(ctx: Context, model: str | None = None, input: str | None = None, overlap: float = 0.5,
                  tta: Any = None, batch_size: int = 4, device: str = "auto", save_probabilities: bool = False,
                  workers: int | None = None, weights: str = "best", postprocess: bool = True,
                  tta_mode: str = "volume", force: bool = False, output_format: Any = None,
                  statistics: bool = False, preview: bool = False, backend: str = "auto") -> dict[str, Any]:
    """Segment every case of ``input`` with the bundle ``model`` (a registered name or a bundle folder).

    ``output_format`` (a list or comma-separated text of nifti, dicom-seg, seg-nrrd), ``statistics``,
    ``preview``: as ``medseg predict`` (:mod:`medseg.inference.outputs`).

    ``tta_mode``: "volume" (flip the whole volume, average probabilities) or "window" (flip windows
    inside the sliding window, average logits; see :class:`medseg.inference.predictor.Predictor`).
    ``backend``: auto, torch or openvino (:mod:`medseg.inference.backends`); ``workers``: CPU threads
    (default: the cores free when the stage starts).
    ``force``: predict cases the bundle's input guard refuses (:mod:`medseg.preprocess.guard`)."""
    from medseg.inference.cohort import run_predict
    from medseg.inference.tta import tta_axes_from_param

    if not model or not input:
        raise ConfigError("stage 'predict': give 'model' (bundle name or folder) and 'input' (file or folder)",
                          code="bad_params")
    if not 0.0 <= float(overlap) < 1.0 or int(batch_size) < 1:
        raise ConfigError(f"stage 'predict': overlap must be in [0, 1) and batch_size >= 1, got {overlap}, "
                          f"{batch_size}", code="bad_params")
    tta_axes = None if tta is None else tta_axes_from_param(tta)     # None: the bundle's default
    model_spec = str(model)
    as_path = ctx.resolve_input(model_spec)
    if as_path.is_dir():
        model_spec = str(as_path)
    out_dir = ctx.out(ctx.stage_name or "predict")
    report = run_predict(model=model_spec, input_path=ctx.resolve_input(input), output=out_dir, device=str(device),
                         tta_axes=tta_axes, tta_mode=str(tta_mode), overlap=float(overlap), batch_size=int(batch_size),
                         save_probabilities=bool(save_probabilities), workers=workers, weights=weights,
                         postprocess=bool(postprocess), progress=False, force=bool(force),
                         output_formats=output_format, statistics=bool(statistics), preview=bool(preview),
                         backend=str(backend))
    failed = {o.case_id: f"error:{(o.error or {}).get('code', 'error')}" for o in report.failed}
    for cid, st in failed.items():
        log.error("predict: case %s failed (%s)", cid, st)
    if report.timings is not None and report.timings.rows:
        log.debug("predict: %s", report.timings.summary())   # developer detail: shown with -v
    ctx.results["_last_volume_dir"] = out_dir
    return {"output": str(out_dir), "manifest": str(report.manifest_path),
            "done": [o.case_id for o in report.outcomes if o.status == "done"],
            "skipped": [o.case_id for o in report.outcomes if o.status == "skipped"], "failed": failed}


@register_stage("postprocess")
def postprocess_stage(ctx: Context, input: str | None = None, rules: dict | None = None) -> dict[str, Any]:
    """Apply per-label rules (:func:`medseg.postprocess.apply_postprocess`) to every label map of ``input``."""
    import numpy as np

    from medseg.postprocess import apply_postprocess

    if input is None and ctx.results.get("_last_volume_dir") is None:
        raise ConfigError("stage 'postprocess': give 'input' (a label map or folder), or put it after 'predict'",
                          code="bad_params")
    rules = dict(rules or {})
    if not isinstance(rules, dict):
        raise ConfigError("stage 'postprocess': 'rules' maps labels to lists of operations", code="bad_params")
    apply_postprocess(np.zeros((1, 1, 1), np.uint8), (1.0, 1.0, 1.0), rules)  # bad rules fail here, before any case

    def clean(vol):
        arr = apply_postprocess(vol.array, vol.spacing_mm, rules) if rules else vol.array
        return vol.with_array(arr, is_label=True)

    return map_volumes(ctx, clean, input=input, kind="label", default_name="postprocess")
