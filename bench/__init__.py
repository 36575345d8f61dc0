"""The RestoreBench harness: data, seeding, batching, metrics, result store, tables, CLI."""
from common import torchvision_shim  # noqa: F401  (must run before anything imports torchvision)
