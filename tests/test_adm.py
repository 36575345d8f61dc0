"""ADM UNet, ADMPrior and checkpoint registry (priors/adm.py, priors/registry.py)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from priors import registry
from priors.adm import ADMPrior, create_unet, qkv_attention, small_config, timestep_embedding
from priors.base import DiffusionPrior
from priors.registry import CheckpointError

MANIFEST = "adm-checkpoint-format/state_dict_manifest.json"
EXPECTED_PARAMS = {"ffhq256": 93_563_910, "imagenet256": 552_814_086, "lsun_bedroom256": 552_814_086}


# --------------------------------------------------------------------------- architecture vs manifest
@pytest.mark.parametrize("name", ["ffhq256", "imagenet256", "lsun_bedroom256"])
def test_state_dict_matches_manifest(shared_fixtures, name):
    manifest = json.loads((shared_fixtures / MANIFEST).read_text())
    (entry,) = [v for k, v in manifest.items() if k.split(" ")[0] == name]
    flags = dict(registry.SPECS[name].flags)
    assert {k: flags[k] for k in entry["config"]} == entry["config"]
    with torch.device("meta"):
        unet = create_unet(**flags)
    ours = [(k, list(v.shape)) for k, v in unet.state_dict().items()]
    assert ours == [(k, list(s)) for k, s in entry["state_dict"]]
    n = sum(p.numel() for p in unet.parameters())
    assert n == entry["num_parameters"] == EXPECTED_PARAMS[name]


def test_flag_errors():
    with pytest.raises(ValueError, match="unknown UNet flag.*num_chanels.*valid flags.*num_channels"):
        create_unet(num_chanels=64)
    with pytest.raises(ValueError, match="class_cond"):
        create_unet(**small_config(class_cond=True))
    with pytest.raises(ValueError, match="channel_mult"):
        create_unet(**small_config(image_size=48))


def test_default_channel_mult_and_attention_levels():
    with torch.device("meta"):
        unet = create_unet(**small_config(image_size=32, attention_resolutions="16,8"))
    # 32 -> (1,2,2,2): widest level has 2 * 32 channels; attention at 16x16 and 8x8 (ds 2 and 4)
    assert unet.middle_block[0].in_layers[2].out_channels == 64
    attn = [n for n, _ in unet.named_modules() if n.endswith(".qkv")]
    assert "input_blocks.1.1.qkv" not in attn and "input_blocks.3.1.qkv" in attn and "input_blocks.5.1.qkv" in attn


# --------------------------------------------------------------------------- exact numerics
def test_timestep_embedding_exact():
    emb = timestep_embedding(torch.tensor([0.0, 999.0, 2.5]), 4)
    f1 = math.exp(-math.log(10000) / 2)  # freqs (1, 0.01)
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0],
                             [math.cos(999), math.cos(999 * f1), math.sin(999), math.sin(999 * f1)],
                             [math.cos(2.5), math.cos(2.5 * f1), math.sin(2.5), math.sin(2.5 * f1)]])
    torch.testing.assert_close(emb, expected, atol=2e-5, rtol=0)  # float32 args at t=999


def _softmax_attention(q, k, v):  # (ch, T) each
    w = torch.softmax(q.T @ k / math.sqrt(q.shape[0]), dim=-1)  # (T, T): w[t, s]
    return v @ w.T  # (ch, T)


def test_attention_one_head_is_softmax_attention():
    torch.manual_seed(0)
    qkv = torch.randn(2, 3 * 8, 10)
    out = qkv_attention(qkv, num_heads=1)
    for b in range(2):
        q, k, v = qkv[b].split(8)
        torch.testing.assert_close(out[b], _softmax_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_attention_head_orders():
    torch.manual_seed(1)
    ch, heads = 4, 3
    qkv = torch.randn(1, 3 * heads * ch, 7)
    legacy, new = qkv_attention(qkv, heads, legacy_order=True), qkv_attention(qkv, heads, legacy_order=False)
    for h in range(heads):
        # legacy: head h owns channels [3ch h, 3ch (h+1)) = [q | k | v]
        q, k, v = qkv[0, 3 * ch * h: 3 * ch * (h + 1)].split(ch)
        torch.testing.assert_close(legacy[0, ch * h: ch * (h + 1)], _softmax_attention(q, k, v), atol=1e-5, rtol=1e-5)
        # new: q, k, v blocks of heads*ch channels, head h at [ch h, ch (h+1)) inside each
        q, k, v = (z[0, ch * h: ch * (h + 1)] for z in qkv.chunk(3, dim=1))
        torch.testing.assert_close(new[0, ch * h: ch * (h + 1)], _softmax_attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(legacy, new)


# --------------------------------------------------------------------------- small model
TINY = {"image_size": 32}  # 32x32, channels (32, 64, 64, 64), 2 heads at 16x16: fast on CPU


def _random_unet(seed: int = 0, **overrides):
    """Small UNet with every parameter random (the zero-initialised output convs too)."""
    torch.manual_seed(seed)
    unet = create_unet(**small_config(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return unet.eval()


@pytest.fixture(scope="module")
def small_unet():
    return _random_unet()


@pytest.fixture(scope="module")
def x2():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def test_zero_initialised_output_and_shapes():
    unet = create_unet(**small_config(**TINY))
    with torch.no_grad():
        out = unet(torch.randn(2, 3, 32, 32), torch.tensor([10.0, 500.5]))
    assert out.shape == (2, 6, 32, 32) and torch.count_nonzero(out) == 0  # zero output conv


def test_prior_outputs_fractional_time_and_frozen(small_unet, x2):
    prior = ADMPrior(small_unet, name="small")
    assert all(not p.requires_grad for p in prior.parameters())
    assert list(prior.state_dict()) == ["unet." + k for k in small_unet.state_dict()]
    eps, v = prior.model_output(x2, torch.tensor([500.0, 500.0]))
    out = small_unet(x2, torch.tensor([500.0, 500.0]))
    torch.testing.assert_close(eps, out[:, :3]), torch.testing.assert_close(v, out[:, 3:])
    eps_frac, _ = prior.model_output(x2, 500.5)
    assert 0 < (eps_frac - eps).abs().max() < 0.5 * eps.abs().max()
    prior.train()
    assert not prior.unet.training
    no_sigma = ADMPrior(_random_unet(learn_sigma=False))
    assert no_sigma.model_output(x2, 10)[1] is None


def test_nfe_counting(small_unet):
    prior = ADMPrior(small_unet)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    eps = prior.eps(x, 300)
    assert prior.nfe.as_dict() == {"nfe_forward": 4, "nfe_backward": 0}
    (g,) = torch.autograd.grad((eps * torch.randn_like(eps)).sum(), x)
    assert prior.nfe.as_dict() == {"nfe_forward": 4, "nfe_backward": 4}
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0


def test_speed_options_match_fp32(small_unet, x2):
    ref = ADMPrior(small_unet).eps(x2, 250).detach()
    scale = ref.abs().max()
    cl = ADMPrior(_random_unet(), channels_last=True).eps(x2, 250)
    torch.testing.assert_close(cl, ref, atol=1e-5 * scale, rtol=0)
    bf16 = ADMPrior(small_unet, autocast="bf16").eps(x2, 250)
    assert bf16.dtype == torch.float32
    assert (bf16 - ref).abs().max() <= 5e-2 * scale  # documented bf16 tolerance (ADMPrior docstring)
    fp16 = ADMPrior(small_unet, autocast="fp16").eps(x2, 250)
    assert fp16.dtype == torch.float32 and (fp16 - ref).abs().max() <= 1e-2 * scale
    with pytest.raises(ValueError, match="autocast"):
        ADMPrior(small_unet, autocast="int8")


def test_checkpointing_gives_same_input_gradient(x2):
    grads = []
    for checkpointing in (False, True):
        prior = ADMPrior(_random_unet(seed=5), checkpointing=checkpointing)
        x = x2[:1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(prior.eps(x, 700).square().sum(), x)
        grads.append(g)
        assert prior.nfe.backward == 1
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- registry
@pytest.fixture(scope="module")
def saved_small(tmp_path_factory, small_unet):
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    torch.save(small_unet.state_dict(), path)
    return path


def test_registry_roundtrip_64(tmp_path):
    unet = _random_unet(seed=7, image_size=64)  # the 64x64, 32-channel small configuration
    path = tmp_path / "small64.pt"
    torch.save(unet.state_dict(), path)
    prior = registry.load(path, flags=small_config(image_size=64))
    assert isinstance(prior, ADMPrior) and prior.image_shape == (3, 64, 64) and prior.name == "small64"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = unet(x, torch.tensor([123.0]))
        eps, v = prior.model_output(x, 123)
    torch.testing.assert_close(torch.cat([eps, v], 1), expected, atol=0, rtol=0)
    assert all(not p.requires_grad for p in prior.parameters())
    with pytest.raises(ValueError, match="flags"):
        registry.load(path)


def test_registry_names(monkeypatch, tmp_path):
    assert registry.available() == ["ffhq256", "imagenet256", "lsun_bedroom256", "gaussian"]
    monkeypatch.setenv("RESTOREBENCH_CHECKPOINTS", str(tmp_path))
    assert registry.checkpoint_dir() == tmp_path
    with pytest.raises(ValueError, match="unknown prior 'ffhq'"):
        registry.load("ffhq")


def test_missing_named_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("RESTOREBENCH_CHECKPOINTS", str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        registry.load("ffhq256")
    msg = str(err.value)
    assert str(tmp_path / "ffhq_10m.pt") in msg and "make checkpoints NAMES=ffhq256" in msg
    assert registry.SPECS["ffhq256"].url in msg


def test_truncated_checkpoint(tmp_path, saved_small):
    data = saved_small.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as err:
        registry.load(bad, flags=small_config(**TINY))
    assert str(bad) in str(err.value) and "delete it and" in str(err.value)


def test_non_checkpoint_files(tmp_path):
    html = tmp_path / "page.pt"
    html.write_text("<html>Google Drive - quota exceeded</html>")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as err:
        registry.load(html, flags=small_config(**TINY))
    assert str(html) in str(err.value) and "delete it" in str(err.value)
    not_sd = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_sd)
    with pytest.raises(CheckpointError, match="not a model state dict") as err:
        registry.load(not_sd, flags=small_config(**TINY))
    assert str(not_sd) in str(err.value)


def test_wrong_architecture(saved_small):
    with pytest.raises(CheckpointError) as err:
        registry.load(saved_small, flags=small_config(**TINY, num_channels=64))
    msg = str(err.value)
    assert str(saved_small) in msg and "shape mismatches" in msg and "input_blocks.0.0.weight" in msg
    assert "pass the flags" in msg
    with pytest.raises(CheckpointError, match="missing keys.*unexpected keys"):
        registry.load(saved_small, flags=small_config(**TINY, num_res_blocks=2))


def test_size_and_checksum_verification(monkeypatch, tmp_path, saved_small):
    import dataclasses

    monkeypatch.setenv("RESTOREBENCH_CHECKPOINTS", str(tmp_path))
    target = tmp_path / "ffhq_10m.pt"
    target.write_bytes(saved_small.read_bytes())
    spec = registry.SPECS["ffhq256"]
    size = target.stat().st_size
    monkeypatch.setitem(registry.SPECS, "ffhq256", dataclasses.replace(spec, size=size + 10))
    with pytest.raises(CheckpointError, match="truncated") as err:
        registry.load("ffhq256")
    assert str(target) in str(err.value) and "make checkpoints NAMES=ffhq256" in str(err.value)
    monkeypatch.setitem(registry.SPECS, "ffhq256", dataclasses.replace(spec, size=size, sha256="0" * 64))
    with pytest.raises(CheckpointError, match="sha256") as err:
        registry.load("ffhq256")
    assert str(target) in str(err.value) and "delete it and" in str(err.value)
    # the right hash passes verification, then the file is checked against the ffhq256 architecture
    good = registry.sha256_file(target)
    monkeypatch.setitem(registry.SPECS, "ffhq256", dataclasses.replace(spec, size=size, sha256=good))
    with pytest.raises(CheckpointError, match="does not fit the UNet"):
        registry.load("ffhq256")
    assert registry.cached_sha256(target) == good


def test_gaussian_by_name():
    prior = registry.load("gaussian")
    assert isinstance(prior, DiffusionPrior) and prior.image_shape == (3, 64, 64)
