"""Diffusion priors: schedules, the ADM UNet, exact Gaussian / Gaussian-mixture priors, checkpoint registry."""
from priors.base import DiffusionPrior, ExactPrior, NFECounter, randn
from priors.registry import available, load
from priors.schedule import ContinuousVP, VPSchedule, edm_sigmas

__all__ = ["DiffusionPrior", "ExactPrior", "NFECounter", "randn", "ContinuousVP", "VPSchedule", "edm_sigmas", "load", "available",
           "GaussianPrior", "GMMPrior"]


def __getattr__(name: str):  # lazy: importing priors stays cheap
    if name == "GaussianPrior":
        from priors.gaussian import GaussianPrior
        return GaussianPrior
    if name == "GMMPrior":
        from priors.gmm import GMMPrior
        return GMMPrior
    raise AttributeError(f"module 'priors' has no attribute {name!r}")
