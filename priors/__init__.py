"""Diffusion priors: schedules, the ADM UNet, exact Gaussian / Gaussian-mixture priors, checkpoint registry."""
from priors.base import DiffusionPrior, NFECounter
from priors.schedule import ContinuousVP, VPSchedule, edm_sigmas

__all__ = ["DiffusionPrior", "NFECounter", "ContinuousVP", "VPSchedule", "edm_sigmas"]
