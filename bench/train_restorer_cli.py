"""`python -m bench train-restorer`: train a HYPIR one-step restorer for one (prior, task) (bench/train_restorer.py).

    python -m bench train-restorer --prior ffhq256 --task sr4 --data datasets/ffhq256_train.json \\
        [--root data/ffhq] [--steps 30000] [--batch-size 8] [--device cuda] [--bf16] [--out checkpoints/hypir]

Task parameters and noise come from the protocol's task (`--protocol`, default table1), so the restorer
is trained on exactly the degradation it is evaluated on. The training images must not overlap any test
manifest (bench/splits.py refuses otherwise). The run checkpoints to OUT/hypir_<prior>_<task>.train.pt
every --checkpoint-every steps and resumes from it when started again with the same settings; at the end
it writes the EMA adapter OUT/hypir_<prior>_<task>.safetensors, which a protocol row uses with
`hypir: {label: HYPIR, overrides: {adapter: OUT}}`.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from bench.errors import BenchError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-restorer", help="train a HYPIR one-step restorer (LoRA on the prior's UNet) for one task",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, help="registered ADM prior (ffhq256, imagenet256, ...) or a checkpoint path")
    p.add_argument("--unet", default=None, help="for a checkpoint path: the registered prior whose UNet flags to reuse")
    p.add_argument("--task", required=True, help="task name (sr4, deblur_gaussian, deblur_motion, inpaint_random, ...)")
    p.add_argument("--data", required=True, help="folder of training images, or a training manifest (.json)")
    p.add_argument("--root", default=None, help="image folder of a manifest (default $RESTOREBENCH_DATA/<folder> or "
                                                "./data/<folder>, folder = the manifest's data_folder or dataset)")
    p.add_argument("--protocol", default="table1", help="protocol whose task parameters and sigma_y to use")
    p.add_argument("--image-size", type=int, default=None, help="image size (default: the prior's)")
    p.add_argument("--steps", type=int, default=30000, help="training steps (1 G + 1 D update each; HYPIR 30000)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rank", type=int, default=64, help="LoRA rank (alpha = rank)")
    p.add_argument("--k-m", type=int, default=200, help="UNet time index of the generator (HYPIR model_t)")
    p.add_argument("--k-c", type=int, default=200, help="index whose abar converts eps to x0 (HYPIR coeff_t)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate of G and D (AdamW)")
    p.add_argument("--discriminator", default="lpips-vgg16", choices=("lpips-vgg16", "tiny"),
                   help="frozen discriminator backbone (recorded in the adapter)")
    p.add_argument("--lpips-weight", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=231)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the UNet and D (LoRA stays fp32)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing of the UNet")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--out", default="checkpoints/hypir", help="folder for the checkpoint and the adapter")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.set_defaults(func=handler)


# ----------------------------------------------------------------------------------- data
def training_images(data: str, root: str | None) -> tuple[list[Path], dict[str, Any], str]:
    """(image paths, the manifest they form, how to name the data) for a folder or a manifest file."""
    path = Path(data)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        manifest = {"dataset": None, "images": [{"id": p.stem, "file": p.name, "sha256": None} for p in files]}
        return files, manifest, str(path)
    if path.suffix != ".json" or not path.is_file():
        raise BenchError(f"train-restorer: --data {data}: not a folder of images nor a manifest .json file")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BenchError(f"train-restorer: manifest {data} is not valid JSON: {err}") from None
    folder = Path(root) if root else _data_root(str(manifest.get("data_folder") or manifest.get("dataset") or path.stem))
    if not folder.is_dir():
        raise BenchError(f"train-restorer: image folder {folder} of {data} does not exist; pass --root FOLDER or set "
                         "RESTOREBENCH_DATA (see datasets/README.md)")
    rule = (manifest.get("selection") or {}).get("rule")
    if manifest.get("images") is None and rule == "first_per_class":
        per = int(manifest["selection"]["per_class"])
        files = []
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            files += sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:per]
        resolved = {**manifest, "images": [{"id": p.stem, "file": p.name, "sha256": None} for p in files]}
        return files, resolved, str(path)
    if not isinstance(manifest.get("images"), list):
        raise BenchError(f"train-restorer: manifest {data} has no 'images' list (nor a first_per_class rule)")
    files, missing = [], []
    for e in manifest["images"]:
        f = folder / e["file"]
        (files if f.is_file() else missing).append(f)
    if missing:
        raise BenchError(f"train-restorer: {len(missing)} image(s) of {data} missing in {folder} (first: "
                         f"{missing[0].name}); put them there or pass --root")
    return files, manifest, str(path)


def _data_root(dataset: str) -> Path:
    from bench.protocol import repo_path
    base = os.environ.get("RESTOREBENCH_DATA")
    return Path(base) / dataset if base else repo_path("data") / dataset


def check_disjoint(data: str, resolved: dict[str, Any] | None = None) -> None:
    """Refuse a test manifest, or training images that a test manifest holds (bench/splits.py): the manifest
    file before its images are looked for, the resolved list (folder, rule-based manifest) after."""
    from bench.splits import refuse_test_overlap
    if resolved is None:
        if Path(data).suffix == ".json" and Path(data).is_file():
            refuse_test_overlap(data, "train-restorer")
        return
    refuse_test_overlap(resolved, "train-restorer")


def task_settings(protocol: str, task: str) -> tuple[dict[str, Any], float]:
    from bench import protocol as protocols
    p = protocols.load(protocol)
    spec = next((t for t in p.tasks if t.name == task), None)
    if spec is None:
        raise BenchError(f"train-restorer: protocol {p.name!r} has no task {task!r}; its tasks: "
                         f"{', '.join(t.name for t in p.tasks)} (or pass --protocol)")
    return dict(spec.params), float(spec.sigma_y)


# ----------------------------------------------------------------------------------- handler
def handler(args: argparse.Namespace) -> int:
    from bench.devices import resolve_device
    from bench.prior_loading import load_prior
    from bench.train_restorer import ImageSource, RestorerTrainer, TrainConfig, manifest_hash, run
    from solvers.hypir import adapter_filename

    task_params, sigma_y = task_settings(args.protocol, args.task)
    check_disjoint(args.data)
    files, manifest, data_name = training_images(args.data, args.root)
    check_disjoint(args.data, manifest)
    device = resolve_device(args.device)
    size = args.image_size or 256
    prior = load_prior(args.prior, size, device, unet=args.unet)
    if getattr(prior, "unet", None) is None:
        raise BenchError(f"train-restorer: prior {args.prior!r} is not an ADM network; HYPIR adapts a diffusion UNet")
    config = TrainConfig(prior=str(prior.name), task=args.task, task_params=task_params, sigma_y=sigma_y,
                         steps=args.steps, batch_size=args.batch_size, rank=args.rank, k_m=args.k_m, k_c=args.k_c,
                         lr_g=args.lr, lr_d=args.lr, w_lpips=args.lpips_weight, discriminator=args.discriminator,
                         seed=args.seed, checkpoint_every=args.checkpoint_every,
                         precision="bf16" if args.bf16 else "fp32", checkpointing=args.checkpointing)
    trainer = RestorerTrainer(prior, config, ImageSource(files, int(prior.image_shape[-1])))
    out = Path(args.out)
    ckpt = out / adapter_filename(config.prior, config.task).replace(".safetensors", ".train.pt")
    if ckpt.is_file():
        trainer.load_checkpoint(ckpt)
        print(f"resuming {ckpt} at step {trainer.step} of {config.steps}")
    print(f"training HYPIR for prior {config.prior}, task {config.task} ({task_params}, sigma_y {sigma_y}) on "
          f"{len(files)} images from {data_name}; device {device}, {config.precision}; D: {trainer.D.describe()}")
    with _progress(config.steps, trainer.step, args.no_progress) as on_step:
        run(trainer, ckpt, on_step)
    adapter = trainer.write_adapter(out / adapter_filename(config.prior, config.task), data_name,
                                    manifest_hash(manifest["images"]))
    print(f"wrote {adapter} ({trainer.step} steps, {trainer.seconds / 3600:.2f} h); use it with "
          f"`hypir: {{label: HYPIR, overrides: {{adapter: {out}}}}}` in a protocol")
    return 0


class _progress:
    """A rich progress bar with the latest losses (or a plain line every 100 steps)."""

    def __init__(self, total: int, start: int, plain: bool) -> None:
        self.total, self.start, self.plain = total, start, plain
        self.bar = None

    def __enter__(self):
        if not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.bar = Progress(TextColumn("train-restorer"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[losses]}"))
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, completed=self.start, losses="")
        return self.on_step

    def on_step(self, e: dict[str, float]) -> None:
        text = (f"mse {e['mse']:.4f} lpips {e['lpips']:.3f} adv {e['adv_g']:.3f} D {e['loss_d']:.3f} "
                f"logits {e['logit_real']:+.2f}/{e['logit_fake']:+.2f}")
        if self.bar is not None:
            self.bar.update(self.task, completed=int(e["step"]), losses=text)
        elif int(e["step"]) % 100 == 0 or int(e["step"]) == self.total:
            print(f"step {int(e['step'])}/{self.total}: {text}", flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
