"""``--executor ray`` on a real one-machine Ray cluster (2 CPUs) gives the local executor's bytes.

One cluster for the module (start-up ~5-10 s on the loaded 2-core CI machine). Skips cleanly when
Ray is not installed (``pip install 'medseg[distributed]'``); ``make test`` installs it (dev extra).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.inference.helpers import REPO_ROOT, blob_cohort, blob_image, make_bundle, oblique_lps_affine, save_nifti
from tests.system.kill_helpers import tree_bytes

ray = pytest.importorskip("ray", reason="needs Ray: pip install 'medseg[distributed]'")
pytest.importorskip("ray.data")

pytestmark = pytest.mark.slow  # ~30-40 s on 2 cores: one Ray cluster start + three Ray Data runs


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": env})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_cohort")
    bundle = make_bundle(root / "bundle")
    src = blob_cohort(root / "in", 4, (24, 28, 20))
    good = (src / "case_0.nii.gz").read_bytes()
    (src / "case_bad.nii.gz").write_bytes(good[: len(good) // 2])  # truncated gzip stream
    return root, bundle, src


def _predict(bundle, src, out, executor):
    from medseg.inference.cohort import run_predict

    return run_predict(model=bundle, input_path=src, output=out, device="cpu", workers=1, save_probabilities=True,
                       executor=executor)


def test_predict_on_ray_equals_local_byte_for_byte(cluster, cohort):
    from medseg.executors import executor_spec

    root, bundle, src = cohort
    local = _predict(bundle, src, root / "local", "local")
    remote = _predict(bundle, src, root / "ray", executor_spec("ray", actors=1))
    for rep in (local, remote):
        assert [o.case_id for o in rep.failed] == ["case_bad"]
        assert rep.count("done") == 4
    assert remote.failed[0].error == local.failed[0].error
    assert local.failed[0].error["code"] not in ("", "Exception")
    a, b = tree_bytes(root / "local"), tree_bytes(root / "ray")
    assert ".medseg-batch.lock" not in a and ".medseg-batch.lock" not in b   # removed at the end of a run
    assert a.pop("timings.csv")  # the local run's phase timings (a log, different every run; not kept on Ray)
    assert sorted(a) == sorted(b) == sorted(["manifest.json"] + [f"case_{i}{s}" for i in range(4)
                                                                  for s in (".nii.gz", "_probabilities.npz")])
    for name in a:
        assert a[name] == b[name], name

    # resume on Ray: verified outputs are skipped, the failed case is tried again (and fails again)
    again = _predict(bundle, src, root / "ray", executor_spec("ray", actors=1))
    assert again.count("skipped") == 4 and [o.case_id for o in again.failed] == ["case_bad"]
    assert tree_bytes(root / "ray") == b


def test_predict_outputs_on_ray_equal_local(cluster, cohort, tmp_path):
    """--statistics, --preview and seg-nrrd (issue 16) on Ray: the same files, byte for byte."""
    from medseg.executors import executor_spec
    from medseg.inference.cohort import run_predict

    root, bundle, src = cohort
    kw = {"model": bundle, "input_path": src, "device": "cpu", "workers": 1, "output_formats": ["seg-nrrd"],
          "statistics": True, "preview": True}
    run_predict(output=tmp_path / "local", executor="local", **kw)
    run_predict(output=tmp_path / "ray", executor=executor_spec("ray", actors=1), **kw)
    a, b = tree_bytes(tmp_path / "local"), tree_bytes(tmp_path / "ray")
    for t in (a, b):
        assert ".medseg-batch.lock" not in t   # the output lock is removed at the end of a run
        t.pop("timings.csv", None)
    assert sorted(a) == sorted(b)
    assert {f"case_{i}{s}" for i in range(4) for s in (".seg.nrrd", "_statistics.json", "_preview.png")} <= set(a)
    assert "statistics.csv" in a
    for name in a:
        assert a[name] == b[name], name


def test_evaluate_on_ray_equals_local_byte_for_byte(cluster, cohort, tmp_path):
    from medseg.report.evaluation import run_evaluation

    root, _, _ = cohort
    ref = tmp_path / "ref"
    pred = tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    aff = oblique_lps_affine(spacing=(1, 1, 1))
    for i in range(3):
        img = blob_image((24, 28, 20), seed=i)
        lab = (img > 130).astype(np.uint8) + (img > 160).astype(np.uint8)
        save_nifti(lab, ref / f"c{i}.nii.gz", aff)
        save_nifti(np.roll(lab, i, axis=1), pred / f"c{i}.nii.gz", aff)
    save_nifti(np.zeros((24, 28, 20), np.uint8), ref / "c_bad.nii.gz", aff)
    save_nifti(np.full((24, 28, 20), 0.5, np.float32), pred / "c_bad.nii.gz", aff)  # non-integer labels
    res_l, _ = run_evaluation(pred, ref, tmp_path / "ev_local", progress=False)
    res_r, _ = run_evaluation(pred, ref, tmp_path / "ev_ray", progress=False, executor="ray")
    assert list(res_l.failed) == list(res_r.failed) == ["c_bad"]
    a, b = tree_bytes(tmp_path / "ev_local"), tree_bytes(tmp_path / "ev_ray")
    assert sorted(a) == sorted(b) == ["metrics.csv", "report.html", "summary.json"]
    for name in a:
        assert a[name] == b[name], name
    dice = [r["dice"] for r in res_l.rows if r["case"] == "c0"]
    assert dice == [1.0, 1.0]  # c0 is unshifted: a perfect prediction


def test_cli_default_path_never_imports_ray(tmp_path):
    code = ("import sys, medseg.cli.main as m, medseg.batch, medseg.inference.cohort, medseg.metrics.cohort, "
            "medseg.report.evaluation, medseg.wsi.features\n"
            "from medseg.executors import executor_spec\n"
            "assert executor_spec('local').is_local\n"
            "assert not any(k == 'ray' or k.startswith('ray.') for k in sys.modules), 'ray imported'\n")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_missing_ray_gives_the_install_hint(monkeypatch, caplog, tmp_path):
    from medseg.errors import ConfigError
    from medseg.executors import executor_spec, require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'medseg\[distributed\]'"):
        require_ray()
    from medseg.cli.main import main

    # the CLI fails before reading any case, with the hint (exit code 2: a usage error)
    assert main(["evaluate", "--pred", str(tmp_path), "--ref", str(tmp_path), "--out", str(tmp_path / "x"),
                 "--executor", "ray"]) == 2
    assert "pip install 'medseg[distributed]'" in caplog.text
    with pytest.raises(ConfigError, match="--executor"):
        executor_spec("dask")
    with pytest.raises(ConfigError, match="--ray-address"):
        executor_spec("local", address="auto")


def test_wsi_features_on_ray_equal_local(cluster, tmp_path):
    import torch
    from PIL import Image

    from medseg.models.encoders import create_encoder, save_weights
    from medseg.wsi.features import EncoderSpec, extract_features_batch, load_features
    from medseg.wsi.tile_slides import TilingParams, tile_slides

    rng = np.random.default_rng(3)
    slides = []
    for k in range(2):
        img = np.full((192, 192, 3), 240, np.uint8)
        img[24:168, 24:168] = rng.integers(0, 255, (144, 144, 3)).astype(np.uint8) // 2 + (100, 0, 60)
        Image.fromarray(img).save(tmp_path / f"s{k}.png")
        slides.append(tmp_path / f"s{k}.png")
    tile_slides(slides, tmp_path / "tiles", TilingParams(mpp=2.0, tile_size=32, slide_mpp=1.0, mask_mpp=8.0))
    (tmp_path / "tiles" / "broken").mkdir()
    (tmp_path / "tiles" / "broken" / "tiles.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)  # cut short
    torch.manual_seed(0)
    w = tmp_path / "enc.safetensors"
    save_weights(create_encoder("tile_resnet_tiny"), w)
    spec = EncoderSpec(name="tile_resnet_tiny", weights=str(w))
    kw = dict(batch_size=4, workers=0, slide_mpp=1.0)
    rows_l = extract_features_batch(tmp_path / "tiles", tmp_path / "f_local", spec, device="cpu", **kw)
    rows_r = extract_features_batch(tmp_path / "tiles", tmp_path / "f_ray", spec, device="cpu", executor="ray", **kw)
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "tiles_per_s")} for r in rows_l]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "tiles_per_s")} for r in rows_r]
    assert [r["slide"] for r in rows_l] == ["broken", "s0", "s1"]
    assert rows_l[0]["status"].startswith("error:") and [r["status"] for r in rows_l[1:]] == ["ok", "ok"]
    for k in range(2):
        fl, cl, ml = load_features(tmp_path / "f_local" / f"s{k}" / "features.h5")
        fr, cr, mr = load_features(tmp_path / "f_ray" / f"s{k}" / "features.h5")
        assert fl.shape[0] > 4
        np.testing.assert_array_equal(fl, fr)
        np.testing.assert_array_equal(cl, cr)
        assert ml == mr
    again = extract_features_batch(tmp_path / "tiles", tmp_path / "f_ray", spec, device="cpu", executor="ray", **kw)
    assert [r["status"] for r in again[1:]] == ["skipped", "skipped"]


def test_actor_pool_takes_one_gpu_per_actor_when_the_cluster_has_gpus(monkeypatch):
    from medseg.executors import executor_spec
    from medseg.ray_runner import _actor_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 32.0, "GPU": 4.0})
    assert _actor_resources(executor_spec("ray"), gpu=True) == (4, {"num_cpus": 1, "num_gpus": 1})
    assert _actor_resources(executor_spec("ray", actors=2), gpu=True) == (2, {"num_cpus": 1, "num_gpus": 1})
    assert _actor_resources(executor_spec("ray"), gpu=False) == (1, {"num_cpus": 1})  # --device cpu
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert _actor_resources(executor_spec("ray"), gpu=True) == (1, {"num_cpus": 1})
