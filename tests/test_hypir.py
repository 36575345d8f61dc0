"""HYPIR (solvers/hypir.py, priors/lora.py, bench/restorer_discriminator.py): spec hypir.md §6.8 tests 1, 2, 4
and the adapter checks, on a small random-weight ADM UNet at 32x32."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import operators
import solvers
from bench.restorer_discriminator import REAL_TARGET, Discriminator, bce_multilevel
from priors.adm import ADMPrior, create_unet, small_config
from priors.lora import (ADAPTER_NAME, apply_lora, lora_layers, lora_parameters, lora_state_dict, remove_lora, target_names,
                         weights_sha256)
from solvers.base import SolverError
from solvers.hypir import ADAPTER_FORMAT, adapter_filename, colour_fix, generator_x0, restorer_input, wavelet_low

SIZE = 32


def random_prior(seed: int = 0, name: str = "tiny") -> ADMPrior:
    """Small ADM with every weight perturbed (the zero-initialised output convs would make eps = 0)."""
    torch.manual_seed(seed)
    unet = create_unet(**small_config(image_size=SIZE))
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ADMPrior(unet, name=name)


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8


def measured(task: str, x: torch.Tensor):
    A = operators.get(task, image_shape=(3, SIZE, SIZE), seeds=list(range(x.shape[0])), sigma_y=0.05)
    return A, A.measure(x, [torch.Generator().manual_seed(100 + i) for i in range(x.shape[0])])


# --------------------------------------------------------------------------- LoRA
def test_lora_targets_follow_the_spec_mapping():
    unet = random_prior().unet
    names = target_names(unet)
    assert "out.2" in names and "input_blocks.0.0" not in names
    assert not any("emb_layers" in n or "time_embed" in n for n in names)
    for suffix in ("in_layers.2", "out_layers.3", "skip_connection", "qkv", "proj_out"):
        assert any(n.endswith("." + suffix) for n in names), suffix


def test_identity_at_init_bit_for_bit_then_differs_after_one_step():
    """Spec §6.8 test 1: with B = 0, G_0(u) = x0_from_eps(u, k_c, eps_base(u, k_m)) exactly; one step on B changes it."""
    prior = random_prior()
    A, y = measured("sr4", images())
    u = restorer_input(y, A, (3, SIZE, SIZE))
    k_m, k_c = 200, 163
    with torch.no_grad():
        reference = prior.x0_from_eps(u, k_c, prior.eps(u, k_m))
    apply_lora(prior.unet, rank=4)
    g0 = generator_x0(prior, u, k_m, k_c)
    assert torch.equal(g0.detach(), reference)
    params = lora_parameters(prior.unet)
    opt = torch.optim.AdamW(params, lr=1e-3)
    F.mse_loss(g0, torch.zeros_like(g0)).backward()
    assert all(p.grad is not None for p in params)
    opt.step()
    with torch.no_grad():
        g1 = generator_x0(prior, u, k_m, k_c)
    assert (g1 - reference).abs().max() > 1e-6
    remove_lora(prior.unet)
    assert not lora_layers(prior.unet)
    with torch.no_grad():
        assert torch.equal(prior.x0_from_eps(u, k_c, prior.eps(u, k_m)), reference)


def test_lora_init_is_gaussian_with_zero_B():
    prior = random_prior()
    targets = target_names(prior.unet)
    wrapped = apply_lora(prior.unet, rank=8, seed=3)
    a = torch.cat([m.lora_A[ADAPTER_NAME].weight.flatten() for m in wrapped.values()])
    assert all(torch.count_nonzero(m.lora_B[ADAPTER_NAME].weight) == 0 for m in wrapped.values())
    assert abs(a.std().item() - 1 / 8) < 0.01 and abs(a.mean().item()) < 0.01
    assert all(m.scaling[ADAPTER_NAME] == 1.0 for m in wrapped.values())  # alpha = rank
    assert all(m.lora_dropout[ADAPTER_NAME].__class__ is torch.nn.Identity for m in wrapped.values())  # no dropout
    assert list(wrapped) == targets


def test_lora_is_peft_seeded_and_leaves_the_network_as_it_was():
    """PEFT layers; A depends on `seed` only (global RNG untouched); remove_lora restores the modules, PEFT's
    config attribute and the requires_grad flags PEFT froze; a second apply fails loudly."""
    from peft.tuners.lora import LoraLayer
    prior = random_prior()
    unet = prior.unet.requires_grad_(True)
    modules = dict(unet.named_modules())
    rng = torch.get_rng_state()
    first = {k: v for k, v in apply_lora(unet, rank=2, seed=7).items()}
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(isinstance(m, LoraLayer) for m in first.values())
    assert all(not p.requires_grad for n, p in unet.named_parameters() if ".lora_" not in n)
    state = lora_state_dict(unet)
    with pytest.raises(ValueError, match="already carries a LoRA adapter"):
        apply_lora(unet, rank=2)
    remove_lora(unet)
    assert dict(unet.named_modules()).keys() == modules.keys()
    assert all(unet.get_submodule(n) is m for n, m in modules.items())
    assert not hasattr(unet, "peft_config") and all(p.requires_grad for p in unet.parameters())
    apply_lora(unet, rank=2, seed=7)
    again = lora_state_dict(unet)
    remove_lora(unet)
    apply_lora(unet, rank=2, seed=8)
    other = lora_state_dict(unet)
    remove_lora(unet)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not all(torch.equal(state[k], other[k]) for k in state if "lora_A" in k)


@pytest.mark.parametrize("fp16", [False, True])
def test_lora_applied_equals_apply_then_load_with_float32_adapters(fp16):
    """The solver's path (layers injected empty, filled from the state) gives exactly the output of apply_lora +
    load_lora_state; on guided-diffusion's float16 torso the adapters stay float32 and init is still identity."""
    from priors.lora import load_lora_state, lora_applied
    prior = random_prior()
    if fp16:
        prior.unet.convert_to_fp16()
    x = images(2)
    with torch.no_grad():
        reference = prior.eps(x, 100)
        apply_lora(prior.unet, rank=4)
        assert {p.dtype for p in lora_parameters(prior.unet)} == {torch.float32}
        assert torch.equal(prior.eps(x, 100), reference)
        state = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) * 0.01
                 for k, v in lora_state_dict(prior.unet).items()}
        load_lora_state(prior.unet, state)
        adapted = prior.eps(x, 100)
        remove_lora(prior.unet)
        with lora_applied(prior.unet, state):
            assert {p.dtype for p in lora_parameters(prior.unet)} == {torch.float32}
            assert not any(p.requires_grad for p in lora_parameters(prior.unet))
            assert torch.equal(prior.eps(x, 100), adapted)
        assert not lora_layers(prior.unet) and not torch.equal(adapted, reference)
        assert torch.equal(prior.eps(x, 100), reference)


def test_weights_checksum_changes_with_weights_not_with_lora():
    prior = random_prior()
    before = weights_sha256(prior.unet)
    apply_lora(prior.unet, rank=2)
    assert weights_sha256(prior.unet) == before
    remove_lora(prior.unet)
    assert weights_sha256(random_prior(seed=1).unet) != before


# --------------------------------------------------------------------------- adapters and the solver
def write_adapter(path, prior, task="sr4", rank=4, k_m=200, k_c=200, scale_b=0.01, **meta_override):
    from safetensors.torch import save_file
    apply_lora(prior.unet, rank=rank, seed=5)
    state = lora_state_dict(prior.unet)
    gen = torch.Generator().manual_seed(9)
    state = {k: (torch.randn(v.shape, generator=gen) * scale_b if "lora_B" in k else v) for k, v in state.items()}
    remove_lora(prior.unet)
    meta = {"format": ADAPTER_FORMAT, "prior": prior.name, "prior_sha256": weights_sha256(prior.unet), "task": task,
            "k_m": json.dumps(k_m), "k_c": json.dumps(k_c), "rank": json.dumps(rank), "steps": "10",
            "batch_size": "2", "images_seen": "40", "train_seconds": "7200", "device": "cpu",
            "discriminator": "tiny (frozen)", "data_manifest": "test", **meta_override}
    save_file(state, str(path), metadata=meta)
    return state


def test_solver_one_forward_nfe_no_backward_and_prior_restored(tmp_path):
    """Spec §6.8 test 2: a batch of B images costs B forward NFE, 0 backward; the shared prior is unchanged after."""
    prior = random_prior()
    state = write_adapter(tmp_path / adapter_filename("tiny", "sr4"), prior)
    x = images(3)
    A, y = measured("sr4", x)
    solver = solvers.get("hypir", prior, task="sr4", adapter=str(tmp_path), color_fix=False)
    out = solver.solve(y, A)
    assert prior.nfe.as_dict() == {"nfe_forward": 3, "nfe_backward": 0}
    assert solver.budget() == {"nfe_forward": 1, "nfe_backward": 0}
    assert not lora_layers(prior.unet)
    u = restorer_input(y, A, (3, SIZE, SIZE))
    with torch.no_grad():
        base = generator_x0(prior, u, 200, 200).clamp(-1, 1)
        apply_lora(prior.unet, rank=4)
        from priors.lora import load_lora_state
        load_lora_state(prior.unet, state)
        adapted = generator_x0(prior, u, 200, 200).clamp(-1, 1)
        remove_lora(prior.unet)
    assert torch.equal(out, adapted) and not torch.equal(out, base)
    ext = solver.external_models()
    assert "sha256" in ext["restorer adapter"] and "2.00 h" in ext["training"] and "tiny (frozen)" in ext["training"]


def test_adapter_k_values_come_from_its_metadata(tmp_path):
    prior = random_prior()
    write_adapter(tmp_path / "a.safetensors", prior, k_m=150, k_c=100, scale_b=0.0)
    A, y = measured("deblur_gaussian", images(2))
    write_adapter(tmp_path / "b.safetensors", prior, task="deblur_gaussian", k_m=150, k_c=100, scale_b=0.0)
    solver = solvers.get("hypir", prior, task="deblur_gaussian", adapter=str(tmp_path / "b.safetensors"),
                         color_fix=False)
    with torch.no_grad():
        want = generator_x0(prior, y, 150, 100).clamp(-1, 1)
    assert torch.equal(solver.solve(y, A), want)


def test_missing_adapter_is_one_line_naming_file_and_command(tmp_path):
    prior = random_prior()
    with pytest.raises(SolverError) as err:
        solvers.get("hypir", prior, task="sr4", adapter=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "hypir_tiny_sr4.safetensors") in msg
    assert "python -m bench train-restorer --prior tiny --task sr4" in msg


def test_adapter_of_another_task_or_prior_is_refused(tmp_path):
    prior = random_prior()
    write_adapter(tmp_path / "sr.safetensors", prior, task="sr4")
    with pytest.raises(SolverError, match=r"trained for task 'sr4', not 'deblur_gaussian'"):
        solvers.get("hypir", prior, task="deblur_gaussian", adapter=str(tmp_path / "sr.safetensors"))
    other = random_prior(seed=7)
    with pytest.raises(SolverError, match=r"weights sha256 .* retrain"):
        solvers.get("hypir", other, task="sr4", adapter=str(tmp_path / "sr.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SolverError, match="not a readable adapter file"):
        solvers.get("hypir", prior, task="sr4", adapter=str(tmp_path / "junk.safetensors"))


def test_no_adapter_given_fails_at_solve_with_the_fix():
    prior = random_prior()
    solver = solvers.get("hypir", prior, task="sr4")
    A, y = measured("sr4", images(1))
    with pytest.raises(SolverError, match="no adapter given.*train-restorer.*adapter: init"):
        solver.solve(y, A)


# --------------------------------------------------------------------------- input and colour fix
def test_restorer_input_per_task():
    x = images(2)
    A, y = measured("sr4", x)
    assert torch.equal(restorer_input(y, A, (3, SIZE, SIZE)),
                       F.interpolate(y, size=(SIZE, SIZE), mode="bicubic", align_corners=False))
    A, y = measured("inpaint_random", x)
    u = restorer_input(y, A, (3, SIZE, SIZE))
    assert torch.equal(u, A.adjoint(y)) and torch.equal(u == 0, (A.forward(torch.ones_like(x)) == 0))
    A, y = measured("deblur_gaussian", x)
    assert restorer_input(y, A, (3, SIZE, SIZE)) is y


def test_wavelet_low_band_and_colour_fix_only_for_sr_and_deblur():
    const = torch.full((1, 3, 40, 40), 0.3)
    assert torch.allclose(wavelet_low(const), const, atol=1e-6)
    x = images(1)
    assert torch.allclose(colour_fix(x, x), x, atol=1e-6)
    ramp = torch.linspace(-1, 1, 128).view(1, 1, 1, 128).expand(1, 3, 8, 128)
    assert (wavelet_low(ramp) - ramp)[..., 31:-31].abs().max() < 1e-5  # linear beyond the 31-px support: kept
    prior = random_prior()
    for task, changes in (("sr4", True), ("deblur_gaussian", True), ("inpaint_random", False)):
        A, y = measured(task, x)
        on = solvers.get("hypir", prior, task=task, adapter="init", color_fix=True).solve(y, A)
        off = solvers.get("hypir", prior, task=task, adapter="init", color_fix=False).solve(y, A)
        assert (not torch.equal(on, off)) == changes, task


# --------------------------------------------------------------------------- discriminator loss
def test_bce_08_matches_its_formula():
    """Spec §6.8 test 4: real 0.8 sp(-l) + 0.2 sp(l), fake sp(l); mean over positions, sum over levels, batch mean."""
    gen = torch.Generator().manual_seed(0)
    levels = [torch.randn(3, 1, 5, 5, generator=gen) * 3, torch.randn(3, 1, 2, 2, generator=gen), torch.randn(3, 1, generator=gen)]
    sp = lambda t: torch.log1p(torch.exp(t))  # noqa: E731
    real = sum((0.8 * sp(-lv) + 0.2 * sp(lv)).reshape(3, -1).mean(1) for lv in levels).mean()
    fake = sum(sp(lv).reshape(3, -1).mean(1) for lv in levels).mean()
    assert REAL_TARGET == 0.8
    assert torch.allclose(bce_multilevel(levels, 0.8), real, atol=1e-6)
    assert torch.allclose(bce_multilevel(levels, 0.0), fake, atol=1e-6)
    # the G target's per-logit minimum is at sigmoid(l) = 0.8, l = ln 4
    logit = torch.tensor([[math.log(4.0)]], requires_grad=True)
    bce_multilevel([logit], 0.8).backward()
    assert abs(logit.grad.item()) < 1e-6


def test_discriminator_backbone_frozen_heads_train_and_levels():
    D = Discriminator("tiny", width=16)
    out = D(images(2))
    assert len(out) == 4 and out[-1].shape == (2, 1)
    assert all(not p.requires_grad for p in D.backbone.parameters())
    assert D.head_parameters() and all(p.requires_grad for p in D.head_parameters())
    with pytest.raises(ValueError, match="unknown discriminator backbone 'clip'"):
        Discriminator("clip")


def test_vgg_discriminator_uses_the_lpips_weights():
    D = Discriminator("lpips-vgg16", width=8)
    out = D(images(1))
    assert [o.shape[1] for o in out] == [1, 1, 1, 1] and "lpips-vgg16" in D.describe()


# --------------------------------------------------------------------------- tables
def test_cost_table_and_footer_show_training_of_trained_rows(tmp_path):
    from bench import tables
    from solvers.hypir import training_summary

    def rec(solver, task, h):
        return {"dataset": "d", "image_id": "i1", "task": task, "solver": solver, "seed": 0, "config_hash": h,
                "image_sha256": "s", "status": "ok", "message": "", "psnr": 30.0, "ssim": 0.9, "lpips": 0.1,
                "nfe_forward": 1, "nfe_backward": 0, "seconds": 0.1, "peak_mem_mb": 1.0, "batch_size": 1,
                "device": "cpu", "code_version": "v"}

    meta = {"steps": "30000", "batch_size": "8", "images_seen": "480000", "train_seconds": "36000",
            "device": "NVIDIA H100", "precision": "bf16", "discriminator": "lpips-vgg16 (frozen) + heads"}
    text = training_summary(meta)
    assert text == ("30000 steps x batch 8 (480000 images), 10.00 h on NVIDIA H100 (bf16); "
                    "discriminator: lpips-vgg16 (frozen) + heads")
    configs = {"h1": {"solver": {"external_models": {"restorer adapter": "x", "training": text}}},
               "h2": {"solver": {"external_models": {}}}}
    records = [rec("hypir", "t1", "h1"), rec("dps", "t1", "h2")]
    layout = tables.Layout([("d", "Data")], [("t1", "Task one")], [("dps", "DPS"), ("hypir", "HYPIR")])
    files = {f.name: f.read_text() for f in tables.write(records, configs, tmp_path, "t", layout, None)
             if f.suffix == ".md"}
    cost = files["table1_cost.md"]
    assert f"- HYPIR¹, Task one: {text}" in cost and "1 / 0 NFE" in cost  # ¹: footnote of its adapter
    assert "DPS, Task one" not in cost
    assert "- HYPIR: a trained restorer, not zero-shot (HYPIR: one adapter trained per task" in files["table1.md"]


def test_lora_on_the_real_architectures_matches_the_spec_counts():
    """Spec hypir.md §6.3 [check]: FFHQ UNet 83 adapted layers, r=64 -> 15.43 M; ImageNet 137 layers -> 46.5 M."""
    from priors.registry import SPECS
    for name, layers, millions in (("ffhq256", 83, 15.43), ("imagenet256", 137, 46.51)):
        with torch.device("meta"):
            unet = create_unet(**SPECS[name].flags)
        assert len(target_names(unet)) == layers
        apply_lora(unet, 64)
        assert round(sum(p.numel() for p in lora_parameters(unet)) / 1e6, 2) == millions, name
