"""FID and KID over the whole image set of a table cell (optional metrics; protocol `set_metrics: [fid, kid]`).

Per-image metrics (bench/metrics.py) compare an output with its own ground truth; FID and KID compare
the *distribution* of a cell's outputs with the distribution of the ground truths, as papers report them.

* Statistics: torchmetrics `FrechetInceptionDistance` / `KernelInceptionDistance` (float64 features), fed
  with features extracted once per image file (the ground truths' features serve every cell).
  FID = |mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), covariances with 1/(n-1).
  KID = unbiased MMD^2 with the polynomial kernel (x.y / d + 1)^3, mean and std over 100 random subsets of
  min(1000, n) images (a fixed seed, so the same images give the same number).
* Features: torch-fidelity's InceptionV3 (the TF FID network "inception-2015-12-05", pool3, 2048-d) through
  torchmetrics' `NoTrainInceptionV3`, input the stored 8-bit PNGs (uint8, 0..255), resized to 299x299 with
  torch-fidelity's TF1.x-compatible bilinear resize (`antialias=False`: the resize of the original TF FID
  code and torch-fidelity; torchmetrics' default antialiased resize gives different numbers).
* Weights: torch-fidelity's release asset `weights-inception-2015-12-05-6726825d.pth`, fetched by
  `make checkpoints` (`python -m bench.fid --download`) into $RESTOREBENCH_CHECKPOINTS or ./checkpoints.
  Verified: the sha256 of the file must start with the prefix in its name (6726825d), torch.hub's
  `check_hash` convention; the full hash and size are not pinned (not known offline; the first download
  prints them). A missing or failing file is a one-line error; nothing is ever downloaded implicitly
  (torch-fidelity would otherwise fetch it silently) and there is no fallback network.
* Images: the runner saves every output of a protocol with set metrics as
  `outputs/<dataset>/<task>/<entry>/<config hash>/<image id>.png` and the ground truths as
  `outputs/<dataset>/_gt/<image id>.png` (8-bit, the same rounding as the grids). A cell's fake set is its
  'ok' outputs, its real set the ground truths of every image of the cell; a cell with a missing file is
  reported as such, never computed on a subset.
* Bias: FID is biased upwards for small sets (the estimate of S_r, S_f from n images); FID on 1000 images is
  noticeably higher than on 50 000 and comparable only at the same n. KID is unbiased. The table states n.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from bench.errors import BenchError
from common.fileio import atomic_write, atomic_write_text

SET_METRICS = ("fid", "kid")
INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILENAME}"
INCEPTION_SOURCE = "torch-fidelity feature_extractor_inceptionv3.URL_INCEPTION_V3 (also torchmetrics' FID default)"
INCEPTION_SHA256_PREFIX = re.search(r"-([a-f0-9]{8})\.pth$", INCEPTION_FILENAME).group(1)
KID_SUBSETS, KID_SUBSET_SIZE, KID_DEGREE, KID_SEED = 100, 1000, 3, 0
FEATURE_BATCH = 32
OUTPUTS = "outputs"
GT = "_gt"


class SetMetricError(BenchError):
    """The Inception weights are missing or wrong, or a cell's images are not stored."""


# ------------------------------------------------------------------------------------- weights
def weights_path(directory: str | Path | None = None) -> Path:
    from priors.registry import checkpoint_dir
    return Path(directory) / INCEPTION_FILENAME if directory is not None else checkpoint_dir() / INCEPTION_FILENAME


FIX = "run `make checkpoints NAMES=inception` (python -m bench.fid --download)"


def verify_weights(path: Path) -> None:
    """The file exists and its sha256 starts with the prefix in its name; else SetMetricError (one line)."""
    if not path.is_file():
        raise SetMetricError(f"FID/KID Inception weights not found at {path}; {FIX} or download "
                             f"{INCEPTION_URL} there (or set $RESTOREBENCH_CHECKPOINTS)")
    from priors.registry import cached_sha256
    digest = cached_sha256(path)
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        raise SetMetricError(f"{path} has sha256 {digest[:16]}..., expected a hash starting with "
                             f"{INCEPTION_SHA256_PREFIX} (corrupted or another file): delete it and {FIX}")


def download_weights(directory: str | Path | None = None, url: str | None = None, progress: bool = True) -> Path:
    """Fetch the Inception weights (resumable, atomic), then verify them; a verified file is kept."""
    from priors.checkpoints import fetch_file
    from priors.registry import CheckpointError
    path = weights_path(directory)
    if path.is_file():
        verify_weights(path)
        print(f"inception: {path} already present")
        return path
    try:
        fetch_file(url or INCEPTION_URL, path, progress=progress, label="inception")
    except CheckpointError as err:
        raise SetMetricError(str(err)) from None
    try:
        verify_weights(path)
    except SetMetricError:
        path.unlink()
        raise
    return path


class _InceptionFeatures(nn.Module):
    """uint8 (B, 3, H, W) -> (B, 2048) pool3 features of torch-fidelity's InceptionV3 (float32 inside)."""

    num_features = 2048

    def __init__(self, path: Path):
        super().__init__()
        import common.torchvision_shim  # noqa: F401  (torch_fidelity imports torchvision)
        from torchmetrics.image.fid import NoTrainInceptionV3
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(path), antialias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def inception_features(directory: str | Path | None = None, device: str = "cpu") -> nn.Module:
    """The FID feature extractor; SetMetricError when its weights are missing or fail verification."""
    path = weights_path(directory)
    verify_weights(path)
    return _InceptionFeatures(path).to(device).eval()


# ------------------------------------------------------------------------------------- statistics
class _Given(nn.Module):
    """Passes precomputed features through torchmetrics' update() unchanged."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance of two feature sets (N, D), N >= 2 each: torchmetrics FrechetInceptionDistance."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    metric = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    metric.update(real.to(torch.float64), real=True)
    metric.update(fake.to(torch.float64), real=False)
    return float(metric.compute())


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, subsets: int = KID_SUBSETS,
                      subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED) -> tuple[float, float, int]:
    """(mean, std, subset size) of torchmetrics KernelInceptionDistance, subset size min(subset_size, n)."""
    import warnings

    from torchmetrics.image.kid import KernelInceptionDistance
    size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():  # "will save all extracted features in buffer": intended
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=subsets, subset_size=size,
                                         degree=KID_DEGREE)
    metric.update(real.to(torch.float64), real=True)
    metric.update(fake.to(torch.float64), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


# ------------------------------------------------------------------------------------- images
def output_dir(results_dir: Path, dataset: str, task: str, entry: str, config_hash: str) -> Path:
    return Path(results_dir) / OUTPUTS / dataset / task / entry / config_hash


def gt_dir(results_dir: Path, dataset: str) -> Path:
    return Path(results_dir) / OUTPUTS / dataset / GT


def save_png(path: Path, image: np.ndarray) -> None:
    """(H, W, 3) uint8 -> PNG, atomically."""
    pil = Image.fromarray(image)
    atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"))


def _load_uint8(paths: list[Path]) -> torch.Tensor:
    arrays = []
    for p in paths:
        with Image.open(p) as im:
            arrays.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class FeatureCache:
    """Features of image files, extracted once (batches of one image size) and kept by path."""

    def __init__(self, extractor: nn.Module, device: str = "cpu"):
        self.extractor = extractor
        self.device = device
        self._cache: dict[Path, torch.Tensor] = {}

    def __call__(self, paths: list[Path]) -> torch.Tensor:
        todo = [p for p in dict.fromkeys(paths) if p not in self._cache]
        by_size: dict[tuple[int, int], list[Path]] = {}
        for p in todo:
            with Image.open(p) as im:
                by_size.setdefault(im.size, []).append(p)
        with torch.no_grad():
            for group in by_size.values():
                for i in range(0, len(group), FEATURE_BATCH):
                    chunk = group[i:i + FEATURE_BATCH]
                    feats = self.extractor(_load_uint8(chunk).to(self.device)).detach().to("cpu", torch.float64)
                    self._cache.update(zip(chunk, feats))
        return torch.stack([self._cache[p] for p in paths])


# ------------------------------------------------------------------------------------- cells
@dataclass
class SetScore:
    dataset: str
    task: str
    row: str
    n_real: int
    n_fake: int
    fid: float = math.nan
    kid_mean: float = math.nan
    kid_std: float = math.nan
    kid_subset: int = 0
    problem: str = ""


def score_cells(results_dir: Path, records: list[dict], base_method: dict[str, str], features: FeatureCache,
                which: Iterable[str] = SET_METRICS) -> list[SetScore]:
    """FID/KID of every (dataset, task, row) of `records` (the rows a table shows; `solver` = row id,
    `base_method` maps extra rows to their protocol entry). Never computed on a subset of a cell's images."""
    which = set(which)
    cells: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        cells.setdefault((r["dataset"], r["task"], r["solver"]), []).append(r)
    out = []
    for (ds, task, row), recs in sorted(cells.items()):
        recs = sorted(recs, key=lambda r: r["image_id"])
        ok = [r for r in recs if r["status"] == "ok"]
        score = SetScore(ds, task, row, len(recs), len(ok))
        out.append(score)
        if not ok:
            score.problem = "no successful image"
            continue
        entry = base_method.get(row, row)
        real = [gt_dir(results_dir, ds) / f"{r['image_id']}.png" for r in recs]
        fake = [output_dir(results_dir, ds, task, entry, r["config_hash"]) / f"{r['image_id']}.png" for r in ok]
        missing = [p for p in real + fake if not p.is_file()]
        if missing:
            score.problem = (f"{len(missing)} of {len(real) + len(fake)} images not stored (e.g. {missing[0]}); "
                             f"rerun with `set_metrics` in the protocol")
            continue
        if len(ok) < 2:
            score.problem = "needs at least 2 images"
            continue
        f_real, f_fake = features(real), features(fake)
        if "fid" in which:
            score.fid = fid_from_features(f_real, f_fake)
        if "kid" in which:
            score.kid_mean, score.kid_std, score.kid_subset = kid_from_features(f_real, f_fake)
    return out


def card(n_images: int | None = None) -> dict[str, str]:
    """The FID/KID lines of the metric card."""
    n = f"{n_images} images per cell" if n_images else "all images of a cell"
    return {
        "fid": (f"FID over {n} (fake: the cell's successful outputs; real: the ground truths of the same images), "
                f"torchmetrics FrechetInceptionDistance on torch-fidelity InceptionV3 pool3 (2048-d) features, "
                f"weights {INCEPTION_FILENAME} (TF inception-2015-12-05); input 8-bit PNG, resized to 299x299 "
                f"with torch-fidelity's TF1.x bilinear resize (no antialias). FID is biased upwards at small n: "
                f"FID on 1000 images is higher than on 50k and comparable only at equal n"),
        "kid": (f"KID (x1000 in tables): unbiased MMD^2, polynomial kernel (x.y/2048 + 1)^3, mean +- std over "
                f"{KID_SUBSETS} subsets of min({KID_SUBSET_SIZE}, n) images, seed {KID_SEED}; same features"),
    }


def markdown(scores: list[SetScore], labels: dict[str, str], title: str) -> str:
    lines = [f"# {title}: FID / KID", "", "FID↓ and KID×1000↓ over each cell's image set (n = images with an "
             "output). Small n biases FID upwards: compare FID only at equal n.", "",
             "| Dataset | Task | Method | n | FID↓ | KID×1000↓ |", "|---|---|---|---:|---:|---:|"]
    for s in scores:
        fid = "–" if math.isnan(s.fid) else f"{s.fid:.2f}"
        kid = "–" if math.isnan(s.kid_mean) else f"{1000 * s.kid_mean:.2f} ± {1000 * s.kid_std:.2f}"
        n = f"{s.n_fake}/{s.n_real}" if s.n_fake < s.n_real else str(s.n_real)
        if s.problem:
            fid, kid = f"– ({s.problem.replace('|', '/')})", "–"
        lines.append(f"| {s.dataset} | {s.task} | {labels.get(s.row, s.row)} | {n} | {fid} | {kid} |")
    lines += ["", "### Metric card", ""] + [f"- {k}: {v}" for k, v in card().items()] + [""]
    return "\n".join(lines)


def csv_text(scores: list[SetScore]) -> str:
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "task", "method", "n_real", "n_fake", "fid", "kid_mean", "kid_std", "kid_subset_size",
                "problem"])
    for s in scores:
        w.writerow([s.dataset, s.task, s.row, s.n_real, s.n_fake, *("" if math.isnan(v) else f"{v:.6f}"
                    for v in (s.fid, s.kid_mean, s.kid_std)), s.kid_subset, s.problem])
    return buf.getvalue()


def write_tables(results_dir: Path, records: list[dict], configs: dict[str, dict], selection: dict | None,
                 labels: dict[str, str], title: str, which: Iterable[str] = SET_METRICS,
                 extractor: nn.Module | None = None, all_configs: bool = False,
                 fingerprints: dict | None = None, device: str = "cpu") -> list[Path]:
    """Write results/<protocol>/table1_fid.{md,csv} for the rows `bench table` shows (same selection).

    `extractor`: uint8 (B, 3, H, W) -> (B, D) features; default the Inception network (its weights must be
    present: SetMetricError otherwise, before any work)."""
    from bench.variants import select_rows
    from bench.tables import TABLE_STEM
    extractor = extractor if extractor is not None else inception_features(device=device)
    rows = select_rows(records, configs, selection or None, all_configs, fingerprints, labels)
    scores = score_cells(Path(results_dir), rows.records, rows.base_method, FeatureCache(extractor, device), which)
    all_labels = {**labels, **dict(rows.methods)}
    return [atomic_write_text(Path(results_dir) / f"{TABLE_STEM}_fid.md", markdown(scores, all_labels, title)),
            atomic_write_text(Path(results_dir) / f"{TABLE_STEM}_fid.csv", csv_text(scores))]


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> int:
    """`python -m bench.fid --download [--dir D] [--url U]` (what `make checkpoints` runs) or `--check`."""
    ap = argparse.ArgumentParser(prog="python -m bench.fid", description="FID/KID Inception weights")
    ap.add_argument("--download", action="store_true", help="fetch and verify the Inception weights")
    ap.add_argument("--check", action="store_true", help="verify the weights file only")
    ap.add_argument("--dir", help="folder ($RESTOREBENCH_CHECKPOINTS or ./checkpoints)")
    ap.add_argument("--url", help="a mirror of the release asset")
    args = ap.parse_args(argv)
    try:
        if args.download:
            out(f"inception: {download_weights(args.dir, args.url)}")
        else:
            verify_weights(weights_path(args.dir))
            out(f"inception: {weights_path(args.dir)} verified")
    except SetMetricError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
