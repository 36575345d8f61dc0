"""A fast stand-in solver and tiny protocols for the harness tests (imported by the runs via `imports:`).

`bench_fake`: x_hat = A^T y + 0.01 * noise from the image's own stream, one counted prior call per
image; $BENCH_FAKE_SLEEP seconds per call slow it down without changing its config hash (resume
test); `diverge_below` raises SolverDiverged for a batch that
contains an image whose measurement mean is below the threshold (a per-image property, so the
runner's image-by-image retry gives exactly those images a 'diverged' record).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from solvers.base import Solver, SolverDiverged

ROOT = Path(__file__).resolve().parents[1]


class BenchFakeSolver(Solver):
    name = "bench_fake"
    defaults = {
        "diverge_below": {"value": -10.0, "source": "chosen by us: test knob"},
        "noise": {"value": 0.01, "source": "chosen by us: test knob"},
    }
    smoke = {}

    def budget(self) -> dict[str, int]:
        return {"nfe_forward": 1, "nfe_backward": 0}

    def _solve(self, y, A, rng):
        time.sleep(float(os.environ.get("BENCH_FAKE_SLEEP", 0)))
        if (y.flatten(1).mean(1) < float(self.diverge_below)).any():
            raise SolverDiverged("fake divergence")
        x = A.adjoint(y) + float(self.noise) * rng.randn(A.image_shape, y)
        self.prior.denoise(x, 0.1)  # one counted network call per image
        return x


def protocol(tmp_path: Path, *, name: str = "tiny", solvers: dict | None = None, count: int = 4, size: int = 32,
             tasks: dict | None = None, batch_size: int = 4, **extra) -> Path:
    """Write a tiny protocol (demo images, exact Gaussian prior) and return its path."""
    body = {
        "name": name, "description": "test protocol", "seed": 3, "batch_size": batch_size, "sigma_y": 0.05,
        "metrics": {"lpips": "alex", "ssim": "rgb"}, "grid_images": 2, "smoke": False,
        "imports": ["tests.test_bench_fakes"], "reference": None,
        "datasets": {"demo": {"label": "Demo", "prior": "gaussian", "image_size": size,
                              "manifest": "datasets/demo.json", "root": "datasets/demo", "count": count}},
        "tasks": tasks or {"inpaint_random": {"label": "Inpaint", "params": {"p_range": [0.8, 0.8]}},
                           "sr4": {"label": "SR x4", "params": {"factor": 4}}},
        "solvers": solvers or {"bench_fake": {"label": "Fake"}},
        **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def cli(*args: str, env: dict | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """`python -m bench ARGS` from the repository root (a fresh process, as a user runs it)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def test_fake_solver_is_batch_invariant():
    import operators
    import solvers
    from bench import seeding
    from priors.gaussian import embedded
    prior = embedded(image_size=16)
    A = operators.get("sr4", image_shape=(3, 16, 16), seeds=[1, 2], sigma_y=0.0)
    y = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    s = solvers.get("bench_fake", prior)
    both = s.solve(y, A, [seeding.generator(0, "a"), seeding.generator(0, "b")])
    one = s.solve(y[1:], A.select([1]), [seeding.generator(0, "b")])
    assert torch.allclose(both[1:], one, atol=1e-6)
    assert prior.nfe.forward == 1


class BenchFakeInpaintOnly(BenchFakeSolver):
    """The same fake, declared for inpainting only (other tasks give 'unsupported' records)."""
    name = "bench_fake_inpaint_only"
    tasks = ("inpaint_random",)


def oom_gaussian(image_size: int):
    """The exact Gaussian prior whose network call raises torch.OutOfMemoryError for more than
    $BENCH_FAKE_OOM_ABOVE images at once (a fake allocator failure; read at every call)."""
    from priors.gaussian import embedded
    prior = embedded(image_size=image_size)
    denoise = prior.denoise

    def limited(x, sigma, *args, **kwargs):
        if x.shape[0] > int(os.environ.get("BENCH_FAKE_OOM_ABOVE", 1 << 30)):
            raise torch.OutOfMemoryError(f"CUDA out of memory (fake): batch of {x.shape[0]}")
        return denoise(x, sigma, *args, **kwargs)

    prior.denoise = limited
    return prior


def tiny_adm(image_size: int, **speed):
    """A random-weight ADM UNet of the real architecture (seeded), taking the speed options."""
    from priors.adm import ADMPrior, create_unet, small_config
    torch.manual_seed(0)
    unet = create_unet(**small_config(image_size=image_size, num_channels=32, num_head_channels=32))
    return ADMPrior(unet, name="tiny-adm", **speed)
