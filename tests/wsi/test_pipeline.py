"""`medseg wsi train` (tile, features, MIL, BCL stages) and `medseg wsi predict` on small synthetic slides."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.wsi.labels import read_labels


def _slide(path, rng, *, positive: bool, um_per_px: float = 1.0):
    img = np.full((192, 192, 3), 235, np.uint8)
    img[16:176, 16:176] = np.clip(rng.normal((190, 110, 170), 15, (160, 160, 3)), 0, 255)
    if positive:
        img[48:112, 48:112] = np.clip(rng.normal((90, 30, 110), 10, (64, 64, 3)), 0, 255)  # "lesion"
    res = 1e4 / um_per_px  # pixels per cm
    Image.fromarray(img).save(path, tiffinfo={296: 3, 282: res, 283: res})


def test_read_labels_reports_bad_rows(tmp_path):
    (tmp_path / "l.csv").write_text("slide_id,label\na,1\nb,0\nc,tumour\nghost,1\nd\n")
    lab, problems = read_labels(tmp_path / "l.csv", slides=["a", "b", "c"])
    assert lab == {"a": 1, "b": 0}
    assert "unknown label 'tumour'" in problems["c"] and "not among the input" in problems["ghost"]
    assert "row 5" in problems
    lab2, _ = read_labels(tmp_path / "l.csv", slides=["a", "b", "c"], classes=["normal", "tumour"])
    assert lab2 == {"c": 1}


def test_train_and_predict_end_to_end(tmp_path, rng):
    from medseg import config as cfgmod
    from medseg.cli.main import main

    torch.set_num_threads(1)
    sl = tmp_path / "slides"
    sl.mkdir()
    for i in range(6):
        _slide(sl / f"s{i}.tif", rng, positive=bool(i % 2))
    (tmp_path / "labels.csv").write_text("slide_id,label\n" + "".join(f"s{i},{i % 2}\n" for i in range(6))
                                         + "ghost,1\ns0x,maybe\n")
    cfg = {"name": "t", "output": str(tmp_path / "run"), "stages": [
        {"stage": "wsi_tile", "params": {"slides": str(sl), "mpp": 2.0, "tile_size": 16, "mask_mpp": 8.0,
                                         "min_area_mm2": 0.0}},
        {"stage": "wsi_features", "params": {"encoder": "tile_resnet_tiny", "batch_size": 32, "workers": 0,
                                             "device": "cpu"}},
        {"stage": "wsi_mil", "params": {"labels": str(tmp_path / "labels.csv"),
                                        "mil": {"epochs": 10, "ensemble": 1, "lr": 0.002},
                                        "cv_folds": 3}},
        {"stage": "wsi_bcl", "params": {"rounds": 1, "k_schedule": [2], "finetune_epochs": 1, "batch_size": 8}}]}
    cfgmod.save_yaml(cfg, tmp_path / "train.yaml")
    assert main(["wsi", "train", "--config", str(tmp_path / "train.yaml")]) == 0
    run = tmp_path / "run"
    bundle = json.loads((run / "model" / "bundle.json").read_text())
    assert bundle["stage"] == "wsi_bcl" and sorted(bundle["trained_on"]) == [f"s{i}" for i in range(6)]
    assert (run / "bcl" / "round_1" / "pseudo_labels.npz").is_file()
    assert (run / "config.resolved.yaml").is_file()
    cv = json.loads((run / "mil_cv.json").read_text())
    assert len(cv["per_fold"]) == 3 and all(f["n_test"] == 2 for f in cv["per_fold"])
    for k in ("auc", "accuracy", "balanced_accuracy", "f1"):
        assert 0.0 <= cv[f"{k}_mean"] <= 1.0

    # predict: a coarse slide (4 um/px) cannot be tiled at 2 um/px -> per-slide error; a blank one has no tissue
    _slide(tmp_path / "coarse.tif", rng, positive=True, um_per_px=4.0)
    blank = np.full((128, 128, 3), 236, np.uint8)
    Image.fromarray(blank).save(tmp_path / "blank.tif", tiffinfo={296: 3, 282: 1e4, 283: 1e4})
    out = tmp_path / "pred"
    rc = main(["wsi", "predict", "--model", str(run / "model"), "--input", str(sl), str(tmp_path / "coarse.tif"),
               str(tmp_path / "blank.tif"), "--output", str(out), "--device", "cpu", "--workers", "0",
               "--top-k", "3"])
    assert rc == 1  # one slide failed, the others were written
    rows = {r["slide"]: r for r in csv.DictReader((out / "predictions.csv").open())}
    assert rows["coarse"]["status"] == "error:mpp_too_fine"
    assert rows["blank"]["status"] == "no_tissue" and rows["blank"]["probability"] == ""
    for i in range(6):
        r = rows[f"s{i}"]
        assert r["status"] == "ok" and 0.0 <= float(r["probability"]) <= 1.0
        assert r["label"] == str(int(float(r["probability"]) >= 0.5))
        assert (out / f"s{i}" / "heatmap.png").is_file()
        assert len(list((out / f"s{i}" / "top_tiles").glob("rank*.png"))) == 3
        att = np.loadtxt(out / f"s{i}" / "attention.csv", delimiter=",", skiprows=1)
        assert att[:, 3].sum() == pytest.approx(1.0, abs=1e-4)
        assert np.all(np.diff(att[:, 3]) <= 1e-9)  # sorted by attention
