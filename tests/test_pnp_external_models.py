"""Models besides the protocol's prior are declared (Solver.external_models, part of describe() and so of the
config), and PnP-ADMM's DnCNN is read, verified and hashed once per process, not once per batch."""
from __future__ import annotations

import pytest
import torch

import operators
import solvers
from priors.gaussian import GaussianPrior
from solvers import pnp_denoisers
from solvers.pnp_denoisers import converted_path, install_weights, load_dncnn

SIZE = 16


@pytest.fixture
def weights(tmp_path, monkeypatch):
    """Converted 17M weights in a fresh cache folder, and an empty process cache."""
    monkeypatch.setenv("RESTOREBENCH_CACHE", str(tmp_path))
    pnp_denoisers.clear_dncnn_cache()
    install_weights(("17M",))
    yield converted_path("17M")
    pnp_denoisers.clear_dncnn_cache()


def _problem(batch: int = 2):
    seeds = list(range(batch))
    A = operators.get("sr4", image_shape=(3, SIZE, SIZE), seeds=seeds, sigma_y=0.05)
    x = torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = A.measure(x, [torch.Generator().manual_seed(10 + s) for s in seeds])
    return A, y


def _count(monkeypatch, name: str) -> list[int]:
    calls = [0]
    real = getattr(pnp_denoisers, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(pnp_denoisers, name, counted)
    return calls


def test_dncnn_weights_are_read_and_hashed_once_per_process(weights, monkeypatch):
    reads, hashes = _count(monkeypatch, "_read_converted"), _count(monkeypatch, "sha256_file")
    prior = GaussianPrior(image_shape=(3, SIZE, SIZE))
    A, y = _problem()
    first = solvers.get("pnp_admm", prior, task="sr4", denoiser="dncnn", iterations=2)
    out1 = first.solve(y, A)
    assert (reads[0], hashes[0]) == (1, 1)  # the first batch reads and verifies the file
    first.describe()
    second = solvers.get("pnp_admm", prior, task="sr4", denoiser="dncnn", iterations=2)  # next batch / build
    out2 = second.solve(y, A)
    second.describe()
    assert (reads[0], hashes[0]) == (1, 1)  # ... and nothing reads or hashes it again
    assert torch.equal(out1, out2)
    # the cached network is the verified file's network
    v = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    assert torch.equal(pnp_denoisers.cached_dncnn("17M").denoise_image(v), load_dncnn("17M").denoise_image(v))


def test_a_replaced_weights_file_is_verified_again(weights):
    prior = GaussianPrior(image_shape=(3, SIZE, SIZE))
    A, y = _problem()
    solvers.get("pnp_admm", prior, task="sr4", denoiser="dncnn", iterations=1).solve(y, A)
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated: a new file identity, so read and checked again
    with pytest.raises(pnp_denoisers.WeightsError, match="install_weights"):
        solvers.get("pnp_admm", prior, task="sr4", denoiser="dncnn", iterations=1).solve(y, A)


def test_pnp_admm_declares_dncnn_and_nothing_with_the_priors_denoiser(weights):
    prior = GaussianPrior(image_shape=(3, SIZE, SIZE))
    digest = weights.with_name(weights.name + ".sha256").read_text().strip()
    dncnn = solvers.get("pnp_admm", prior, task="sr4", denoiser="dncnn")
    expected = {"denoiser": f"DnCNN 17M (SCICO BSD-trained weights, file {weights.name}, sha256 {digest[:12]})"}
    assert dncnn.external_models() == expected
    assert dncnn.describe()["external_models"] == expected  # describe() is what the runner records
    own = solvers.get("pnp_admm", prior, task="sr4", denoiser="prior")
    assert own.external_models() == {} and own.describe()["external_models"] == {}


def test_every_other_builtin_solver_uses_only_the_prior():
    prior = GaussianPrior(image_shape=(3, SIZE, SIZE))
    others = sorted(set(solvers.available()) - {"pnp_admm"})
    assert len(others) >= 9
    for name in others:
        solver = solvers.get(name, prior, task="sr4")
        assert solver.external_models() == {}, name
        assert solver.describe()["external_models"] == {}, name
