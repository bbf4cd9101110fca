"""What the segment-aware writers (DICOM SEG, Slicer seg.nrrd, previews) say about each label:
its name, its display colour and a coded concept for what it is.

* **Name**: the bundle's label name (``labels:`` in bundle.yaml); a missing, empty or purely
  numeric name becomes ``label N``.
* **Colour**: a fixed palette indexed by the label value (the same colour for label 1 in every
  output and every run), RGB 0-255.
* **Code**: a SNOMED CT concept (from pydicom's DICOM code dictionary, not typed here) when the
  name is a known structure (``liver``, ``left atrium``, ``Left_Kidney``... case, ``_`` and ``-``
  ignored; a ``left``/``right`` prefix of a known structure becomes a laterality modifier); when
  it is not, the bundle's name (``hippocampus_unet`` -> ``hippocampus``) is tried, so that the
  ``anterior``/``posterior`` labels of the hippocampus bundle are typed as hippocampus; otherwise
  a generic ``Tissue`` concept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# category -> pydicom codes.SCT keyword of the structures typed with it (pydicom supplies the code values)
_ANATOMY = ("Hippocampus", "LeftAtrium", "RightAtrium", "LeftVentricle", "RightVentricle", "Heart", "Liver",
            "Spleen", "Pancreas", "Kidney", "Lung", "Brain", "Prostate", "Aorta", "Stomach", "Gallbladder",
            "Esophagus", "Colon", "Duodenum", "SmallIntestine", "Trachea", "AdrenalGland", "Vertebra", "Femur",
            "Bladder", "Thyroid", "Skull", "Rib", "Sternum", "Sacrum", "Pelvis", "Cerebellum",
            "InferiorVenaCava", "PortalVein", "Rectum", "Uterus", "Humerus", "Scapula", "Clavicle")
_ABNORMAL = ("Neoplasm", "Tumor", "Lesion", "Mass", "Cyst", "Edema", "Necrosis")
_ALIASES = {"tumour": "Tumor", "urinarybladder": "Bladder", "thyroidgland": "Thyroid", "ivc": "InferiorVenaCava",
            "oesophagus": "Esophagus", "adrenal": "AdrenalGland"}
_SIDES = {"left": "Left", "right": "Right"}

# RGB 0-255, by label value (1 -> first entry); distinct hues first, then lighter variants
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128))


@dataclass(frozen=True)
class Code:
    """A coded concept: ``value``, coding ``scheme`` (``SCT``), ``meaning``."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Segment:
    """One label as the writers describe it."""

    value: int
    name: str
    color: tuple[int, int, int]
    category: Code
    type: Code
    modifier: Code | None = None     # laterality (left / right) of ``type``
    known: bool = False              # ``type`` is a specific structure, not the generic concept


def label_color(value: int) -> tuple[int, int, int]:
    """The display colour (RGB 0-255) of label ``value`` (>= 1)."""
    return PALETTE[(int(value) - 1) % len(PALETTE)]


def label_name(value: int, name: object) -> str:
    """The bundle's name of a label, or ``label N`` when it has none (missing, empty or a number)."""
    text = " ".join(str(name).split()) if name is not None else ""
    if not text or re.fullmatch(r"[-+]?\d+(\.\d*)?", text):
        return f"label {int(value)}"
    return text


def _sct(keyword: str) -> Code | None:
    from pydicom.sr.codedict import codes

    try:
        c = getattr(codes.SCT, keyword)
    except AttributeError:
        return None
    return Code(str(c.value), str(c.scheme_designator), str(c.meaning))


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[\s_\-.]+", text.strip().lower()) if w]


def _lookup(text: str) -> tuple[Code, Code, Code | None] | None:
    """(category, type, laterality) of a known structure name, else None."""
    words = _words(text)
    side = None
    if len(words) > 1 and words[0] in _SIDES:
        joined = "".join(words)
        if joined not in ("leftatrium", "rightatrium", "leftventricle", "rightventricle"):
            side, words = _SIDES[words[0]], words[1:]
    joined = "".join(words)
    keyword = _ALIASES.get(joined) or next((k for k in _ANATOMY + _ABNORMAL if k.lower() == joined), None)
    if keyword is None:
        return None
    typ = _sct(keyword)
    cat = _sct("MorphologicallyAbnormalStructure" if keyword in _ABNORMAL else "AnatomicalStructure")
    if typ is None or cat is None:
        return None
    return cat, typ, (_sct(side) if side else None)


def describe_labels(labels: Mapping[int, object], *, bundle_name: str | None = None) -> dict[int, Segment]:
    """:class:`Segment` for every foreground label (value >= 1) of a bundle's ``labels`` mapping."""
    fallback = None
    if bundle_name:   # hippocampus_unet -> try "hippocampus_unet", then "hippocampus"
        parts = _words(bundle_name)
        for n in range(len(parts), 0, -1):
            fallback = _lookup(" ".join(parts[:n]))
            if fallback is not None:
                break
    tissue = _sct("Tissue") or Code("85756007", "SCT", "Tissue")
    out = {}
    for value in sorted(int(v) for v in labels):
        if value < 1:
            continue
        name = label_name(value, labels[value])
        found = _lookup(name) or fallback
        cat, typ, mod = found if found is not None else (tissue, tissue, None)
        out[value] = Segment(value, name, label_color(value), cat, typ, mod, known=found is not None)
    return out
