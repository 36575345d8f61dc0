"""FID/KID (bench/fid.py): closed-form Frechet distances of Gaussian features, an exact unbiased-MMD reference
for KID, per-cell scoring from stored PNGs with a tiny stand-in feature extractor, and the weights checks."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from scipy import linalg

from bench import fid


def _with_moments(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> torch.Tensor:
    """n samples whose sample mean and (1/(n-1)) covariance are exactly `mean` and `cov`."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    white = np.linalg.cholesky(np.cov(z, rowvar=False))
    z = z @ np.linalg.inv(white).T  # sample covariance exactly I
    return torch.from_numpy(z @ np.linalg.cholesky(cov).T + mean)


def _closed_form(m1, s1, m2, s2) -> float:
    return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


def test_fid_equals_closed_form_for_diagonal_gaussians():
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    sd1, sd2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 2.0, 1.5])
    real = _with_moments(200, m1, np.diag(sd1 ** 2), 0)
    fake = _with_moments(300, m2, np.diag(sd2 ** 2), 1)
    # for diagonal covariances: |m1 - m2|^2 + sum (sd1 - sd2)^2 = 4.25 + 5 = 9.25
    assert fid.fid_from_features(real, fake) == pytest.approx(4.25 + 4.0 + 0.0 + 1.0, abs=1e-6)


def test_fid_equals_closed_form_for_correlated_gaussians():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
    s1, s2 = a @ a.T + 0.5 * np.eye(5), b @ b.T + 0.5 * np.eye(5)
    m1, m2 = rng.standard_normal(5), rng.standard_normal(5)
    real, fake = _with_moments(400, m1, s1, 4), _with_moments(250, m2, s2, 5)
    assert fid.fid_from_features(real, fake) == pytest.approx(_closed_form(m1, s1, m2, s2), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero():
    x = _with_moments(50, np.zeros(4), np.eye(4), 6)
    assert abs(fid.fid_from_features(x, x)) < 1e-6


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    m = x.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m ** 2)


def test_kid_with_one_full_subset_equals_the_unbiased_mmd():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 6, generator=g, dtype=torch.float64)
    fake = torch.randn(40, 6, generator=g, dtype=torch.float64) * 1.5 + 0.3
    mean, std, size = fid.kid_from_features(real, fake, subsets=3)
    assert size == 40  # min(1000, n): every subset is the whole set, in another order
    assert mean == pytest.approx(_unbiased_mmd2(real.numpy(), fake.numpy()), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_seeded():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g) + 1
    assert fid.kid_from_features(real, fake, subset_size=10) == fid.kid_from_features(real, fake, subset_size=10)


class TinyFeatures(torch.nn.Module):
    """Stand-in for Inception: uint8 (B, 3, H, W) -> per-channel mean and std (6 features)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float64) / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


def _store(tmp_path, ids, entry="dps", config_hash="h1", task="sr4", dataset="ds", fail=()):
    rng = np.random.default_rng(0)
    records = []
    for i in ids:
        fid.save_png(fid.gt_dir(tmp_path, dataset) / f"{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        ok = i not in fail
        if ok:
            fid.save_png(fid.output_dir(tmp_path, dataset, task, entry, config_hash) / f"{i}.png",
                         rng.integers(0, 128, (8, 8, 3), dtype=np.uint8))
        records.append({"dataset": dataset, "task": task, "solver": entry, "image_id": i, "config_hash": config_hash,
                        "status": "ok" if ok else "diverged"})
    return records


def test_cell_scores_equal_the_statistics_of_the_stored_images(tmp_path):
    ids = [f"im{i}" for i in range(6)]
    records = _store(tmp_path, ids, fail=("im5",))
    cache = fid.FeatureCache(TinyFeatures())
    (score,) = fid.score_cells(tmp_path, records, {}, cache)
    real = cache([fid.gt_dir(tmp_path, "ds") / f"{i}.png" for i in ids])
    fake = cache([fid.output_dir(tmp_path, "ds", "sr4", "dps", "h1") / f"{i}.png" for i in ids[:5]])
    m1, s1 = real.mean(0).numpy(), np.cov(real.numpy(), rowvar=False)
    m2, s2 = fake.mean(0).numpy(), np.cov(fake.numpy(), rowvar=False)
    assert (score.n_real, score.n_fake, score.problem) == (6, 5, "")
    assert score.fid == pytest.approx(_closed_form(m1, s1, m2, s2), rel=1e-5)
    assert score.kid_subset == 5 and not math.isnan(score.kid_mean)


def test_a_cell_with_a_missing_image_is_not_scored_on_a_subset(tmp_path):
    records = _store(tmp_path, ["a", "b", "c"])
    (fid.output_dir(tmp_path, "ds", "sr4", "dps", "h1") / "b.png").unlink()
    (score,) = fid.score_cells(tmp_path, records, {}, fid.FeatureCache(TinyFeatures()))
    assert math.isnan(score.fid) and "1 of 6 images not stored" in score.problem


def test_write_tables_uses_the_selected_configuration(tmp_path):
    records = _store(tmp_path, ["a", "b", "c"], config_hash="h1") + _store(tmp_path, ["a", "b", "c"], config_hash="h2")
    for r in records:
        r["fingerprint"] = "f"
    files = fid.write_tables(tmp_path, records, {}, {("ds", "sr4", "dps"): ("h2", "f")}, {"dps": "DPS"}, "demo",
                             extractor=TinyFeatures())
    csv_lines = files[1].read_text().splitlines()
    assert len(csv_lines) == 2 and csv_lines[1].startswith("ds,sr4,dps,3,3,")
    assert "| ds | sr4 | DPS | 3 |" in files[0].read_text() and "biased" in files[0].read_text()


def test_missing_weights_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTOREBENCH_CHECKPOINTS", str(tmp_path))
    with pytest.raises(fid.SetMetricError, match="not found at .*make checkpoints NAMES=inception"):
        fid.inception_features()
    assert fid.main(["--check"]) == 2


def test_weights_with_the_wrong_hash_prefix_are_refused(tmp_path):
    path = tmp_path / fid.INCEPTION_FILENAME
    path.write_bytes(b"not the weights")
    assert not hashlib.sha256(b"not the weights").hexdigest().startswith(fid.INCEPTION_SHA256_PREFIX)
    with pytest.raises(fid.SetMetricError, match="expected a hash starting with 6726825d"):
        fid.verify_weights(path)


def test_download_verifies_the_hash_prefix(tmp_path):
    """Against a local HTTP server: a file whose sha256 does not start with the prefix is removed."""
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (served / "w.pth").write_bytes(b"x" * 100)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        dest = tmp_path / "ckpt"
        with pytest.raises(fid.SetMetricError, match="expected a hash starting with"):
            fid.download_weights(dest, url=f"http://127.0.0.1:{server.server_port}/w.pth", progress=False)
        assert not (dest / fid.INCEPTION_FILENAME).exists()
    finally:
        server.shutdown()


def test_a_run_with_set_metrics_stops_before_any_work_without_the_weights(tmp_path, monkeypatch):
    from bench import protocol as proto
    from bench.errors import BenchError
    from bench.runner import Runner
    from test_bench_fakes import protocol

    monkeypatch.setenv("RESTOREBENCH_CHECKPOINTS", str(tmp_path / "none"))
    p = proto.load(str(protocol(tmp_path, set_metrics=["fid"], imports=[], solvers={"oracle_mean": {}})))
    with pytest.raises(BenchError, match="nothing was run: FID/KID Inception weights not found"):
        Runner(p, tmp_path / "res", progress=False, log=lambda m: None).run()
    assert not (tmp_path / "res" / "records").exists()


def test_a_run_with_set_metrics_stores_every_output_and_the_tables_score_them(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "verify_weights", lambda path: None)  # the weights are a download
    from bench import protocol as proto
    from bench import store
    from bench.runner import Runner
    from test_bench_fakes import protocol

    path = protocol(tmp_path, set_metrics=["fid", "kid"], tasks={"sr4": {"label": "SR", "params": {"factor": 4}}},
                    imports=[], solvers={"oracle_sample": {"label": "Oracle"}})
    p = proto.load(str(path))
    assert p.set_metrics == ["fid", "kid"] and p.grid_images == 2
    runner = Runner(p, tmp_path / "res", progress=False, log=lambda m: None)
    runner.run()
    records = store.load_records(tmp_path / "res")
    (h,) = {r["config_hash"] for r in records}
    stored = sorted(x.stem for x in fid.output_dir(tmp_path / "res", "demo", "sr4", "oracle_sample", h).glob("*.png"))
    assert stored == sorted(r["image_id"] for r in records) and len(stored) == 4  # all 4, not the 2 grid images
    assert len(list(fid.gt_dir(tmp_path / "res", "demo").glob("*.png"))) == 4
    files = fid.write_tables(tmp_path / "res", records, store.load_configs(tmp_path / "res"),
                             runner.selection().cells, {"oracle_sample": "Oracle"}, "tiny", extractor=TinyFeatures())
    row = files[1].read_text().splitlines()[1].split(",")
    assert row[:5] == ["demo", "sr4", "oracle_sample", "4", "4"] and float(row[5]) > 0 and row[9] == ""


def test_protocol_set_metrics_must_name_known_metrics(tmp_path):
    from bench import protocol as proto
    from bench.errors import BenchError
    from test_bench_fakes import protocol

    with pytest.raises(BenchError, match=r"set_metrics must be a list of fid, kid"):
        proto.load(str(protocol(tmp_path, set_metrics=["is"], imports=[])))


def test_the_inception_extractor_loads_a_weights_file_and_gives_2048_features(tmp_path, monkeypatch):
    """torch-fidelity's architecture through torchmetrics, from a weights file of that architecture (random
    values here: the real file is a download); uint8 images of any size -> (B, 2048) pool3 features."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: None)
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None)
    net = tf_inception.FeatureExtractorInceptionV3("x", ["2048"])
    monkeypatch.undo()
    path = tmp_path / fid.INCEPTION_FILENAME
    torch.save(net.state_dict(), path)
    extractor = fid._InceptionFeatures(path)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = extractor(images)
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    assert torch.equal(extractor(images[1:]), out[1:])  # one image's features do not depend on its batch
    assert extractor.net.use_antialias is False  # torch-fidelity's TF1.x resize, as the card says
