"""The outputs of a predicted case beyond the NIfTI label map: ``--output-format dicom-seg|seg-nrrd``,
``--statistics`` and ``--preview`` of ``medseg predict``.

Per case ``CASE`` (next to ``CASE.nii.gz``, which is always written first)::

    CASE_statistics.json   --statistics: per-label volume, intensity, bounding box (medseg.metrics.label_stats)
    CASE_preview.png       --preview: three orthogonal slices with the labels (medseg.report.preview)
    CASE.seg.nrrd          seg-nrrd: 3D Slicer segmentation (medseg.io.seg_nrrd)
    CASE_seg.dcm           dicom-seg: DICOM SEG referencing the input series (medseg.io.dicom_seg);
                           DICOM input only, none when the case has no label

and, for the cohort, ``statistics.csv`` (the cases that succeeded). They are written in that
order, each atomically, and recorded in the manifest with the label map. A case whose DICOM SEG
cannot be written (input not DICOM, series not referenceable) is reported as failed with the
reason; what was written before it (the NIfTI label map first) stays. Only the DICOM SEG carries
the source's patient and study identifiers (the standard needs them); the file names come from
the case id (the input's file or folder name), never from DICOM headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, InputError

OUTPUT_FORMATS = ("nifti", "dicom-seg", "seg-nrrd")


def parse_output_formats(values: Iterable[str] | str | None) -> tuple[str, ...]:
    """``["nifti,dicom-seg", "seg-nrrd"]`` -> ``("nifti", "dicom-seg", "seg-nrrd")`` (nifti always
    first: the label map is always written). Raises ConfigError naming an unknown format."""
    if values is None:
        return ("nifti",)
    items = [values] if isinstance(values, str) else list(values)
    out = ["nifti"]
    for item in items:
        for name in str(item).split(","):
            name = name.strip().lower().replace("_", "-")
            if not name:
                continue
            if name not in OUTPUT_FORMATS:
                raise ConfigError(f"--output-format {name!r} is not one of {', '.join(OUTPUT_FORMATS)}",
                                  code="bad_params")
            if name not in out:
                out.append(name)
    return tuple(out)


@dataclass(frozen=True)
class CaseOutputs:
    """What to write per case besides the label map (picklable: it travels to Ray actors)."""

    formats: tuple[str, ...] = ("nifti",)
    statistics: bool = False
    preview: bool = False
    labels: dict[int, str] = field(default_factory=dict)    # the bundle's label names, 0 = background
    bundle: str = "model"                                    # bundle name
    bundle_sha256: str = ""                                  # SHA-256 of its weights (manifest: weights_sha256)

    @classmethod
    def for_predictor(cls, predictor, *, formats: Iterable[str] | str | None = None, statistics: bool = False,
                      preview: bool = False) -> CaseOutputs:
        source = getattr(predictor, "source", None)
        ident = predictor.identity()
        return cls(formats=parse_output_formats(formats), statistics=bool(statistics), preview=bool(preview),
                   labels=dict(predictor.labels), bundle=Path(source).name if source else ident["architecture"],
                   bundle_sha256=str(ident.get("weights_sha256", "")))

    @property
    def extra(self) -> bool:
        """True when anything beyond the label map is asked for."""
        return self.statistics or self.preview or self.formats != ("nifti",)

    def params(self) -> dict[str, Any]:
        """What the manifest hashes (only set when :attr:`extra`: earlier manifests stay valid)."""
        return {"formats": list(self.formats), "statistics": self.statistics, "preview": self.preview}

    def write(self, cid: str, pred, root: Path) -> list[Path]:
        """Write the extra outputs of one case (after its label map); returns their paths."""
        from medseg.io.segments import describe_labels

        if not self.extra:
            return []
        image = getattr(pred, "source", None)
        if image is None:
            raise ValueError("the prediction carries no input image (Prediction.source)")
        segments = describe_labels(self.labels, bundle_name=self.bundle)
        names = {v: s.name for v, s in segments.items()}
        paths: list[Path] = []
        if self.statistics:
            from medseg.metrics.label_stats import label_statistics, write_case_statistics

            rows = label_statistics(pred.label, image, names)
            paths.append(write_case_statistics(root / f"{cid}_statistics.json", cid, rows))
        if self.preview:
            from medseg.report.preview import render_preview

            paths.append(render_preview(pred.label, image, names, root / f"{cid}_preview.png", title=cid))
        if "seg-nrrd" in self.formats:
            from medseg.io.seg_nrrd import write_seg_nrrd

            paths.append(write_seg_nrrd(pred.label, root / f"{cid}.seg.nrrd", segments=segments))
        if "dicom-seg" in self.formats:
            from medseg.io.dicom_seg import write_dicom_seg

            src = image.meta.get("path")
            if image.meta.get("format") != "dicom" or not src:
                raise InputError(f"--output-format dicom-seg needs a DICOM series as input, and "
                                 f"{Path(str(src)).name if src else 'this case'} is not one (its NIfTI label map "
                                 "was written)", path=src, code="not_dicom")
            seg = write_dicom_seg(pred.label, root / f"{cid}_seg.dcm", source=src, segments=segments,
                                  series_uid=image.meta.get("series_uid"),
                                  algorithm={"bundle": self.bundle, "bundle_sha256": self.bundle_sha256})
            if seg is not None:
                paths.append(seg)
        return paths


def write_cohort_statistics(root: Path, case_ids: Iterable[str]) -> Path | None:
    """``root/statistics.csv`` from the case JSONs of ``case_ids`` that exist; None when there are none."""
    from medseg.metrics.label_stats import read_case_statistics
    from medseg.metrics.label_stats import write_cohort_statistics as write_csv

    found = [root / f"{cid}_statistics.json" for cid in case_ids]
    cases = [read_case_statistics(p) for p in found if p.is_file()]
    return write_csv(root / "statistics.csv", cases) if cases else None
