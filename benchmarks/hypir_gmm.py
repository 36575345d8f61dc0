"""Diffusion init vs random init of an adversarially trained restorer, on the exact 25-mode GMM (spec hypir.md §6.8
tests 5 and 6; HYPIR's Lemma 1 and Propositions 1-2). `python -m benchmarks.hypir_gmm` writes results/hypir-gmm/.

Problem: x ~ GMMPrior.grid25 (2-D, modes 8 apart, identity covariances; its denoiser is exact, eps_sc = 0),
y = x + sigma_y n (denoising). Restorer input u = y (no noise added, not scaled: HYPIR's input).

Generators (same residual MLP r_phi: 2 -> 128 -> 128 -> 2, SiLU, input y / 8, output x 8):
  A "diffusion init": G_A(y) = x0_from_eps(y, k_c, eps(y, k_m)) + r_phi(y), last layer of r_phi zero (the "LoRA");
  B "random init":    G_B(y) = r_phi(y), default PyTorch init (no diffusion term).
Discriminator: spectral-norm MLP 2 -> 64 -> 64 -> 1 (LeakyReLU 0.2), the same initial weights for A and B.
Losses: G: MSE + 0.5 * BCE(D(G(y)), 0.8); D: BCE(D(x), 0.8) + BCE(D(G(y)), 0) (bench/restorer_discriminator.py);
no LPIPS in 2-D. Adam, lr 1e-3 for both [ours, toy scale], batch 256, G and D alternate on fresh batches.

Measured at K in {0, 50, 200, 1000} steps on a fixed evaluation set (4000 pairs, the same for every run):
  grad_out: mean per-sample norm of d BCE(D(G(y)), 0.8) / d G(y) (what D sends back to G, Lemma 1);
  grad_par: norm of the adversarial loss gradient w.r.t. the trainable generator parameters;
  gap:      mean D logit on clean x minus mean D logit on G(y) (Fig. 3a);
  sw2:      sliced Wasserstein-2 between G(y) and 4000 exact prior samples (64 projections; Theorem 1);
  modes:    fraction of the 25 modes receiving >= half their mass (1/50) under nearest-mode assignment (Prop. 1);
  mse:      E|G(y) - x|^2 / 2 (per coordinate).
Each cell: mean over 3 seeds (min-max in brackets). References: y itself, the exact posterior mean E[x | y].
Then the k_c sweep (k_m = 200) and the k_m sweep (k_c = 200) of generator A at init and after 200 steps, and the
perturbed score (eps scaled by 1 + delta) at init.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from bench.restorer_discriminator import REAL_TARGET, bce_multilevel
from common.fileio import atomic_write_text
from priors.gmm import GMMPrior

Tensor = torch.Tensor
OUT = Path(__file__).resolve().parents[1] / "results" / "hypir-gmm"
CHECKPOINTS = (0, 50, 200, 1000)
SEEDS = (0, 1, 2)
SIGMA_Y = 2.0
BATCH = 256
EVAL = 4000
LR = 1e-3
SCALE = 8.0


class Residual(nn.Module):
    def __init__(self, zero_last: bool) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))
        if zero_last:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, y: Tensor) -> Tensor:
        return SCALE * self.net(y / SCALE)


class Generator(nn.Module):
    """A (diffusion init): exact x0-map at (k_m, k_c) + zero-init residual; B (random init): the residual alone."""

    def __init__(self, prior: GMMPrior | None, k_m: int = 200, k_c: int = 200, eps_scale: float = 1.0) -> None:
        super().__init__()
        self.prior, self.k_m, self.k_c, self.eps_scale = prior, k_m, k_c, eps_scale
        self.residual = Residual(zero_last=prior is not None)

    def base(self, y: Tensor) -> Tensor:
        assert self.prior is not None
        u = y.reshape(-1, 1, 1, 2)
        eps = self.prior.eps(u, self.k_m) * self.eps_scale
        return self.prior.x0_from_eps(u, self.k_c, eps).reshape(-1, 2)

    def forward(self, y: Tensor) -> Tensor:
        r = self.residual(y)
        return r if self.prior is None else self.base(y).detach() + r


def discriminator() -> nn.Module:
    return nn.Sequential(spectral_norm(nn.Linear(2, 64)), nn.LeakyReLU(0.2), spectral_norm(nn.Linear(64, 64)),
                         nn.LeakyReLU(0.2), spectral_norm(nn.Linear(64, 1)))


def pairs(prior: GMMPrior, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(x, y = x + SIGMA_Y n) with x from the mixture."""
    comp = torch.multinomial(prior.weights.float(), n, replacement=True, generator=gen)
    x = prior.means.float()[comp] + torch.randn(n, 2, generator=gen)
    return x, x + SIGMA_Y * torch.randn(n, 2, generator=gen)


def sliced_w2(a: Tensor, b: Tensor, projections: int = 64, seed: int = 0) -> float:
    theta = torch.randn(projections, 2, generator=torch.Generator().manual_seed(seed))
    theta = theta / theta.norm(dim=1, keepdim=True)
    pa, pb = (a @ theta.T).sort(0).values, (b @ theta.T).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())


def mode_coverage(prior: GMMPrior, z: Tensor) -> float:
    nearest = torch.cdist(z, prior.means.float()).argmin(1)
    mass = torch.bincount(nearest, minlength=25).float() / z.shape[0]
    return float((mass >= 0.5 / 25).float().mean())


@dataclass
class Eval:
    x: Tensor
    y: Tensor
    clean: Tensor  # independent exact prior samples


def measure(prior: GMMPrior, G: Generator, D: nn.Module, ev: Eval) -> dict[str, float]:
    D.eval()
    y = ev.y
    out = G(y)
    out_leaf = out.detach().requires_grad_(True)
    adv = bce_multilevel([D(out_leaf)], REAL_TARGET)
    (g_out,) = torch.autograd.grad(adv, out_leaf)
    params = [p for p in G.parameters() if p.requires_grad]
    g_par = torch.autograd.grad(bce_multilevel([D(G(y))], REAL_TARGET), params)
    with torch.no_grad():
        z = out.detach()
        gap = float(D(ev.x).mean() - D(z).mean())
    return {"grad_out": float(g_out.norm(dim=1).mean() * y.shape[0]),
            "grad_par": float(torch.sqrt(sum((g ** 2).sum() for g in g_par))),
            "gap": gap, "sw2": sliced_w2(z, ev.clean), "modes": mode_coverage(prior, z),
            "mse": float(((z - ev.x) ** 2).mean() / 1)}


def train(prior: GMMPrior, G: Generator, seed: int, ev: Eval, checkpoints=CHECKPOINTS) -> dict[int, dict[str, float]]:
    torch.manual_seed(1000 + seed)
    D = discriminator()
    opt_g = torch.optim.Adam(G.parameters(), lr=LR)
    opt_d = torch.optim.Adam(D.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(2000 + seed)
    out = {}
    for step in range(max(checkpoints) + 1):
        if step in checkpoints:
            out[step] = measure(prior, G, D, ev)
        if step == max(checkpoints):
            break
        x, y = pairs(prior, BATCH, gen)
        D.eval()
        x_hat = G(y)
        loss = F.mse_loss(x_hat, x) + 0.5 * bce_multilevel([D(x_hat)], REAL_TARGET)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        x, y = pairs(prior, BATCH, gen)
        D.train()
        with torch.no_grad():
            x_hat = G(y)
        loss_d = bce_multilevel([D(x)], REAL_TARGET) + bce_multilevel([D(x_hat)], 0.0)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
    return out


def make_generator(prior: GMMPrior, kind: str, seed: int, **kw) -> Generator:
    torch.manual_seed(seed)
    return Generator(prior if kind == "A" else None, **kw)


def summarise(values: list[float]) -> tuple[float, float, float]:
    return sum(values) / len(values), min(values), max(values)


def fmt(values: list[float], digits: int = 3) -> str:
    m, lo, hi = summarise(values)
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if len(values) > 1 else f"{m:.{digits}f}"


def experiment(seeds=SEEDS) -> dict:
    torch.set_num_threads(1)
    prior = GMMPrior.grid25(dim=2)
    g = torch.Generator().manual_seed(123)
    x, y = pairs(prior, EVAL, g)
    clean = prior.sample(EVAL, torch.Generator().manual_seed(321)).reshape(EVAL, 2).float()
    ev = Eval(x, y, clean)
    refs = {}
    with torch.no_grad():
        post = prior.posterior_mean(y.reshape(-1, 1, 1, 2).double(), torch.eye(2, dtype=torch.float64),
                                    sigma_y=SIGMA_Y).reshape(-1, 2).float()
    floor = prior.sample(EVAL, torch.Generator().manual_seed(999)).reshape(EVAL, 2).float()
    for name, z in (("y (no restoration)", y), ("exact posterior mean E[x|y]", post), ("exact prior samples", floor)):
        refs[name] = {"sw2": sliced_w2(z, clean), "modes": mode_coverage(prior, z), "mse": float(((z - x) ** 2).mean())}
    runs = {kind: [train(prior, make_generator(prior, kind, s), s, ev) for s in seeds] for kind in ("A", "B")}
    sweep_kc, sweep_km = [], []
    for k_c in (50, 100, 163, 200, 300, 400):
        r = [train(prior, make_generator(prior, "A", s, k_m=200, k_c=k_c), s, ev, (0, 200)) for s in seeds]
        sweep_kc.append((k_c, r))
    for k_m in (50, 100, 200, 300, 400):
        r = [train(prior, make_generator(prior, "A", s, k_m=k_m, k_c=200), s, ev, (0, 200)) for s in seeds]
        sweep_km.append((k_m, r))
    perturbed = []
    for k in (50, 200):
        for delta in (0.0, 0.1, 0.3, 1.0):
            G = make_generator(prior, "A", 0, k_m=k, k_c=k, eps_scale=1 + delta)
            with torch.no_grad():
                z = G(y)
            perturbed.append((k, delta, {"sw2": sliced_w2(z, clean), "modes": mode_coverage(prior, z),
                                         "mse": float(((z - x) ** 2).mean())}))
    matched = []
    for k in (50, 100, 163, 200, 300, 400):
        G = make_generator(prior, "A", 0, k_m=k, k_c=k)
        with torch.no_grad():
            z = G(y)
        sigma = math.sqrt((1 - float(prior.schedule.abar(torch.tensor([float(k)], dtype=torch.float64)))) /
                          float(prior.schedule.abar(torch.tensor([float(k)], dtype=torch.float64))))
        matched.append((k, sigma, {"sw2": sliced_w2(z, clean), "modes": mode_coverage(prior, z),
                                   "mse": float(((z - x) ** 2).mean())}))
    return {"refs": refs, "runs": runs, "sweep_kc": sweep_kc, "sweep_km": sweep_km, "perturbed": perturbed,
            "matched": matched, "seeds": list(seeds)}


def markdown(res: dict) -> str:
    lines = ["# HYPIR on the exact 25-mode GMM: diffusion init (A) vs random init (B)", "",
             f"Generated by `python -m benchmarks.hypir_gmm` (benchmarks/hypir_gmm.py; its docstring defines every "
             f"quantity). Denoising y = x + {SIGMA_Y:g} n on GMMPrior.grid25 (modes 8 apart, unit covariances); "
             f"k_m = k_c = 200; batch {BATCH}, Adam lr {LR:g}; evaluation on {EVAL} fixed pairs; cells: mean "
             f"[min, max] over seeds {res['seeds']}.", "",
             "## A vs B over training", "",
             "| K | gen | D->G grad (per sample, wrt output) | D->G grad (wrt params) | logit gap real-fake | "
             "sliced W2 to clean law | modes >= half mass | MSE |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for k in CHECKPOINTS:
        for kind in ("A", "B"):
            vals = {m: [r[k][m] for r in res["runs"][kind]] for m in ("grad_out", "grad_par", "gap", "sw2", "modes", "mse")}
            lines.append(f"| {k} | {kind} | {fmt(vals['grad_out'])} | {fmt(vals['grad_par'])} | {fmt(vals['gap'])} | "
                         f"{fmt(vals['sw2'])} | {fmt(vals['modes'], 2)} | {fmt(vals['mse'])} |")
    lines += ["", "References (no training):", "", "| estimate | sliced W2 | modes | MSE |", "|---|---:|---:|---:|"]
    for name, r in res["refs"].items():
        lines.append(f"| {name} | {r['sw2']:.3f} | {r['modes']:.2f} | {r['mse']:.3f} |")
    for title, key, fixed in (("k_c sweep (k_m = 200), generator A", "sweep_kc", "k_c"),
                              ("k_m sweep (k_c = 200), generator A", "sweep_km", "k_m")):
        lines += ["", f"## {title}", "", f"| {fixed} | MSE at 0 | sliced W2 at 0 | modes at 0 | MSE at 200 | "
                  "sliced W2 at 200 | modes at 200 |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for k, runs in res[key]:
            cell = lambda step, m, d=3: fmt([r[step][m] for r in runs], d)  # noqa: E731
            lines.append(f"| {k} | {cell(0, 'mse')} | {cell(0, 'sw2')} | {cell(0, 'modes', 2)} | {cell(200, 'mse')} | "
                         f"{cell(200, 'sw2')} | {cell(200, 'modes', 2)} |")
    lines += ["", "## Theorem 1 at initialisation (generator A, no training)", "",
              "Perturbed score (eps scaled by 1 + delta, k_m = k_c = k):", "",
              "| k | delta | sliced W2 | modes | MSE |", "|---:|---:|---:|---:|---:|"]
    for k, delta, r in res["perturbed"]:
        lines.append(f"| {k} | {delta:g} | {r['sw2']:.3f} | {r['modes']:.2f} | {r['mse']:.3f} |")
    lines += ["", f"k_m = k_c = k against the measurement noise (sigma_y = {SIGMA_Y:g}; sigma_k = sqrt((1-abar)/abar)):", "",
              "| k | sigma_k | sliced W2 | modes | MSE |", "|---:|---:|---:|---:|---:|"]
    for k, sigma, r in res["matched"]:
        lines.append(f"| {k} | {sigma:.3f} | {r['sw2']:.3f} | {r['modes']:.2f} | {r['mse']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.hypir_gmm", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="default results/hypir-gmm/sigma<sigma_y>")
    ap.add_argument("--seeds", type=int, default=len(SEEDS))
    ap.add_argument("--sigma-y", type=float, default=SIGMA_Y, help="measurement noise std (modes are 8 apart)")
    args = ap.parse_args(argv)
    globals()["SIGMA_Y"] = args.sigma_y  # the module constant every helper reads
    res = experiment(tuple(range(args.seeds)))
    out = Path(args.out) if args.out else OUT / f"sigma{args.sigma_y:g}"
    atomic_write_text(out / "table.md", markdown(res))
    atomic_write_text(out / "results.json", json.dumps(res, indent=1, default=str) + "\n")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
