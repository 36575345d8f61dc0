"""HYPIR training (bench/train_restorer.py, bench/train_restorer_cli.py): spec hypir.md §6.8 test 3 (loss terms on
a tiny ADM), resume = uninterrupted run, the written adapter drives the solver, train/test disjointness refusal."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import solvers
from bench import cli
from bench.errors import BenchError
from bench.train_restorer import ImageSource, RestorerTrainer, TrainConfig, run
from priors.adm import ADMPrior, create_unet, small_config
from priors.lora import lora_layers
from solvers.hypir import adapter_filename, read_adapter

SIZE = 32
ROOT = Path(__file__).resolve().parents[1]


def tiny_prior(image_size: int = SIZE) -> ADMPrior:
    """Seeded small ADM with every weight perturbed (module:function prior for the CLI test)."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = create_unet(**small_config(image_size=image_size))
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return ADMPrior(unet, name="tiny")


def clean_images(n: int = 16) -> torch.Tensor:
    """Smooth random images (low-frequency content, so the x4 SR task has something to learn)."""
    g = torch.Generator().manual_seed(4)
    low = torch.rand(n, 3, 4, 4, generator=g) * 1.6 - 0.8
    return torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def config(**kw) -> TrainConfig:
    base = dict(prior="tiny", task="sr4", task_params={"factor": 4}, sigma_y=0.05, steps=4, batch_size=4, rank=4,
                w_lpips=0.0, discriminator="tiny", d_width=16, lr_g=1e-4, lr_d=1e-4, checkpoint_every=2)
    return TrainConfig(**{**base, **kw})


def test_loss_terms_behave_on_a_tiny_adm():
    """Spec §6.8 test 3 [ours, small batch]: 16 clean images under the x4 SR operator (no random parameters), batch 4,
    50 G/D steps at lr 1e-3 for both (the spec's 1e-4 scaled up for a rank-4 adapter in 50 steps): the MSE term
    falls, D's real/fake logit gap opens and then closes again, nothing is NaN (fp32)."""
    torch.set_num_threads(1)
    trainer = RestorerTrainer(tiny_prior(), config(steps=50, lr_g=1e-3, lr_d=1e-3), ImageSource(clean_images(), SIZE))
    run(trainer, None)
    log = trainer.log
    assert len(log) == 50 and all(all(v == v for v in e.values()) for e in log)
    first, last = sum(e["mse"] for e in log[:5]) / 5, sum(e["mse"] for e in log[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    gap = [e["logit_real"] - e["logit_fake"] for e in log]
    peak = max(range(50), key=lambda i: gap[i])
    assert gap[peak] > gap[0] + 0.05 and gap[peak] > 0
    assert sum(gap[-5:]) / 5 < gap[peak] - 0.05


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    torch.set_num_threads(1)
    images = ImageSource(clean_images(8), SIZE)
    whole = RestorerTrainer(tiny_prior(), config(task="inpaint_random", task_params={"p_range": [0.8, 0.8]}), images)
    run(whole, None)
    ckpt = tmp_path / "run.train.pt"
    first = RestorerTrainer(tiny_prior(), config(task="inpaint_random", task_params={"p_range": [0.8, 0.8]}), images)
    run(first, ckpt, stop_after=2)
    assert first.step == 2 and ckpt.is_file()
    resumed = RestorerTrainer(tiny_prior(), config(task="inpaint_random", task_params={"p_range": [0.8, 0.8]}), images)
    resumed.load_checkpoint(ckpt)
    run(resumed, ckpt)
    a, b = whole.state(), resumed.state()
    assert a["step"] == b["step"] == 4
    for part in ("lora", "ema", "d_heads"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert [e["mse"] for e in a["log"]] == [e["mse"] for e in b["log"]]
    other = RestorerTrainer(tiny_prior(), config(task="inpaint_random", task_params={"p_range": [0.8, 0.8]}, rank=2),
                            images)
    with pytest.raises(BenchError, match=r"other settings \(rank\)"):
        other.load_checkpoint(ckpt)


def test_written_adapter_has_metadata_and_drives_the_solver(tmp_path):
    torch.set_num_threads(1)
    prior = tiny_prior()
    trainer = RestorerTrainer(prior, config(steps=2, k_c=150), ImageSource(clean_images(8), SIZE))
    run(trainer, None)
    path = trainer.write_adapter(tmp_path / adapter_filename("tiny", "sr4"), "unit-test images", "abc")
    from priors.lora import remove_lora
    remove_lora(prior.unet)
    meta, state = read_adapter(path)
    assert meta["task"] == "sr4" and meta["prior"] == "tiny" and json.loads(meta["k_c"]) == 150
    assert json.loads(meta["steps"]) == 2 and json.loads(meta["images_seen"]) == 16 and meta["data_manifest_sha256"] == "abc"
    assert "tiny" in meta["discriminator"] and json.loads(meta["rank"]) == 4
    import peft
    assert meta["lora"] == f"peft {peft.__version__}"
    assert all(torch.equal(state[k], trainer.ema[k]) for k in state)
    solver = solvers.get("hypir", prior, task="sr4", adapter=str(tmp_path))
    assert solver._k == (200, 150)
    assert not lora_layers(prior.unet)


def test_cli_trains_writes_adapter_and_refuses_test_images(tmp_path, capsys, monkeypatch):
    from PIL import Image
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    torch.set_num_threads(1)
    data = tmp_path / "train"
    data.mkdir()
    for i, x in enumerate(clean_images(4)):
        arr = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(data / f"{10000 + i}.png")
    out = tmp_path / "adapters"
    args = ["train-restorer", "--prior", "test_hypir_training:tiny_prior", "--image-size", str(SIZE),
            "--task", "sr4", "--data", str(data), "--steps", "2", "--batch-size", "2", "--rank", "2",
            "--discriminator", "tiny", "--lpips-weight", "0", "--out", str(out), "--no-progress"]
    assert cli.main(args) == 0
    assert (out / "hypir_tiny_sr4.safetensors").is_file() and (out / "hypir_tiny_sr4.train.pt").is_file()
    meta, _ = read_adapter(out / "hypir_tiny_sr4.safetensors")
    assert json.loads(meta["task_params"]) == {"factor": 4} and json.loads(meta["sigma_y"]) == 0.05  # table1's sr4
    Image.open(data / "10000.png").save(data / "00042.png")  # an FFHQ test id
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "train-restorer" in err and "00042" in err and "ffhq256_val1k.json" in err


def test_a_test_manifest_is_refused_as_training_data(capsys):
    assert cli.main(["train-restorer", "--prior", "ffhq256", "--task", "sr4", "--data",
                     str(ROOT / "datasets/ffhq256_val1k.json"), "--root", "."]) == 2
    assert "is a test manifest" in capsys.readouterr().err


def test_rule_based_manifest_takes_the_first_files_of_each_class(tmp_path):
    import json as _json
    from bench.train_restorer_cli import training_images
    for cls in ("n02", "n01"):
        (tmp_path / "root" / cls).mkdir(parents=True)
        for i in (3, 1, 2):
            (tmp_path / "root" / cls / f"{cls}_{i}.JPEG").write_bytes(b"x")
    manifest = tmp_path / "train.json"
    manifest.write_text(_json.dumps({"dataset": "imagenet", "selection": {"rule": "first_per_class", "per_class": 2},
                                     "images": None}))
    files, resolved, _ = training_images(str(manifest), str(tmp_path / "root"))
    assert [f.name for f in files] == ["n01_1.JPEG", "n01_2.JPEG", "n02_1.JPEG", "n02_2.JPEG"]
    assert [e["id"] for e in resolved["images"]] == ["n01_1", "n01_2", "n02_1", "n02_2"]
    shipped = _json.loads((ROOT / "datasets/imagenet256_train.json").read_text())
    assert shipped["selection"] == {"rule": "first_per_class", "per_class": 10} and shipped["data_folder"] == "imagenet_train"


def test_shipped_ffhq_training_split_is_disjoint_from_test_and_validation():
    import json as _json
    from bench.splits import refuse_test_overlap
    ids = {e["id"] for e in _json.loads((ROOT / "datasets/ffhq256_train.json").read_text())["images"]}
    assert len(ids) == 68900 and min(ids) == "01100" and max(ids) == "69999"
    validation = {e["id"] for e in _json.loads((ROOT / "datasets/ffhq256_validation.json").read_text())["images"]}
    assert not ids & validation
    refuse_test_overlap("datasets/ffhq256_train.json", "test")  # no BenchError
