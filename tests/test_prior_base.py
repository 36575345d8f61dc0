"""The DiffusionPrior interface: NFE counting, Tweedie identities, EDM conversion, learned-range variance."""
import math

import pytest
import torch

from priors.base import DiffusionPrior, NFECounter, randn
from priors.schedule import ContinuousVP, VPSchedule


class ToyPrior(DiffusionPrior):
    """A tiny 'network': eps = tanh(w * x) * (1 + k / 1000), v = tanh(x); records the k it was given."""

    name = "toy"

    def __init__(self):
        super().__init__((3, 4, 4))
        self.w = torch.nn.Parameter(torch.tensor(0.7))
        self.seen_k = None

    def _model(self, x_k, k):
        self.seen_k = k
        eps = torch.tanh(self.w * x_k) * (1 + k.view(-1, 1, 1, 1) / 1000)
        return eps, torch.tanh(x_k)


@pytest.fixture
def prior():
    return ToyPrior()


def test_forward_of_a_batch_of_4_counts_4(prior):
    x = torch.randn(4, 3, 4, 4)
    prior.eps(x, 10)
    assert prior.nfe.as_dict() == {"nfe_forward": 4, "nfe_backward": 0}
    prior.x0(x, torch.tensor([1, 2, 3, 4]))
    prior.score(x, 5.5)
    prior.denoise(x, 2.0)
    prior.model_output(x[:2], 7)
    assert prior.nfe.forward == 4 * 4 + 2 and prior.nfe.backward == 0
    prior.reset_counters()
    assert prior.nfe == NFECounter(0, 0)


def test_vjp_counts_backward_passes_per_image(prior):
    x = torch.randn(4, 3, 4, 4, requires_grad=True)
    eps = prior.eps(x, 100)
    (g,) = torch.autograd.grad((eps**2).sum(), x, retain_graph=True)
    assert prior.nfe.backward == 4 and g.shape == x.shape
    torch.autograd.grad(eps.sum(), x)
    assert prior.nfe.backward == 8
    d = prior.denoise(x, torch.tensor([0.1, 1.0, 10.0, 100.0]))
    d.sum().backward()
    assert prior.nfe.as_dict() == {"nfe_forward": 8, "nfe_backward": 12}
    # a forward without any graph never counts a backward
    with torch.no_grad():
        prior.eps(x, 3)
    assert prior.nfe.backward == 12 and prior.nfe.forward == 12


def test_x0_and_score_follow_the_schedule(prior):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    k = torch.tensor([3.0, 700.0], dtype=torch.float64)
    ab = VPSchedule().alphas_cumprod[k.long()].view(-1, 1, 1, 1)
    eps = torch.tanh(prior.w.item() * x) * (1 + k.view(-1, 1, 1, 1) / 1000)
    torch.testing.assert_close(prior.x0(x, k), (x - (1 - ab).sqrt() * eps) / ab.sqrt())
    assert prior.x0(x, k, clip=True).abs().max() <= 1
    torch.testing.assert_close(prior.score(x, k), -eps / (1 - ab).sqrt())


def test_default_denoise_is_the_vp_precond_conversion(prior):
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([0.1, 3.0, 100.0], dtype=torch.float64)
    d = prior.denoise(x, sigma)
    kappa = ContinuousVP().index(sigma)
    torch.testing.assert_close(prior.seen_k, kappa)  # fractional index, not rounded
    assert prior.seen_k[0].item() == pytest.approx(26.97, abs=0.005)
    c_in = (1 / torch.sqrt(1 + sigma**2)).view(-1, 1, 1, 1)
    eps = torch.tanh(prior.w.item() * x * c_in) * (1 + kappa.view(-1, 1, 1, 1) / 1000)
    torch.testing.assert_close(d, x - sigma.view(-1, 1, 1, 1) * eps)


def test_log_variance_learned_range(prior):
    like = torch.zeros(2, 3, 4, 4)
    s = prior.schedule
    k = torch.tensor([0, 600])
    beta_tilde = s.betas * (1 - s.alphas_cumprod_prev) / (1 - s.alphas_cumprod)
    lo = torch.log(torch.stack([beta_tilde[1], beta_tilde[600]])).float()  # beta_tilde_0 := beta_tilde_1
    hi = torch.log(s.betas[k]).float()
    ones = torch.ones_like(like)
    torch.testing.assert_close(prior.log_variance(k, ones, like), hi.view(-1, 1, 1, 1).expand_as(like))
    torch.testing.assert_close(prior.log_variance(k, -ones, like), lo.view(-1, 1, 1, 1).expand_as(like))
    torch.testing.assert_close(prior.log_variance(k, None, like), lo.view(-1, 1, 1, 1).expand_as(like))
    mid = prior.log_variance(k, 0 * ones, like)
    torch.testing.assert_close(mid, (0.5 * (hi + lo)).view(-1, 1, 1, 1).expand_as(like))
    assert math.isfinite(prior.log_variance(0, None, like).max().item())


def test_bad_shapes_are_clear_errors(prior):
    with pytest.raises(ValueError, match="expects images of shape"):
        prior.eps(torch.randn(2, 3, 8, 8), 5)
    # (B, 1, 1, 1) per-image values are accepted like (B,)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(prior.eps(x, torch.tensor([3.0, 9.0]).view(2, 1, 1, 1)), prior.eps(x, torch.tensor([3.0, 9.0])))
    with pytest.raises(ValueError, match="scalar or have shape"):
        prior.eps(torch.randn(2, 3, 4, 4), torch.tensor([1, 2, 3]))


def test_randn_per_image_generators_do_not_couple_the_batch():
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    a = randn((3, 5), gens([1, 2, 3]))
    b = randn((2, 5), gens([2, 3]))
    torch.testing.assert_close(a[1:], b)
    with pytest.raises(ValueError, match="one per image"):
        randn((3, 5), gens([1, 2]))
