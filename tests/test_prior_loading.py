"""bench/prior_loading.py: the protocol's `prior:` string -> a prior, its speed options, UNet flags and identity."""
from __future__ import annotations

import hashlib
import sys
import textwrap

import pytest
import torch

from bench.errors import BenchError
from bench.prior_loading import load_prior, missing_checkpoint, prior_identity, prior_speed_options
from priors.adm import ADMPrior, create_unet, small_config
from priors.gaussian import GaussianPrior

TINY = small_config(image_size=32, num_channels=32, attention_resolutions="8")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small random ADM checkpoint at an arbitrary path (not a registered file name)."""
    torch.manual_seed(0)
    unet = create_unet(**TINY)
    path = tmp_path_factory.mktemp("ckpt") / "my_model.pt"
    torch.save(unet.state_dict(), path)
    return path


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user module `rb_user_priors` with priors built by functions of several signatures."""
    (tmp_path / "rb_user_priors.py").write_text(textwrap.dedent("""
        from priors.gaussian import embedded
        calls = []

        def plain(image_size):
            return embedded(image_size=image_size)

        def speedy(image_size, autocast=None):
            calls.append(autocast)
            return embedded(image_size=image_size)

        def not_a_prior(image_size):
            return 42

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield sys.modules.get("rb_user_priors")
    sys.modules.pop("rb_user_priors", None)


def test_prior_name_typo_names_the_close_match_and_no_download_hint():
    with pytest.raises(BenchError) as err:
        load_prior("ffhq265", 256, "cpu")
    msg = str(err.value)
    assert msg.startswith("unknown prior 'ffhq265'; did you mean 'ffhq256'? registered: ffhq256, imagenet256, "
                          "lsun_bedroom256, gaussian; or a path to a .pt file")
    assert "module:function" in msg and "download" not in msg and "\n" not in msg
    with pytest.raises(BenchError, match=r"unknown prior 'zzz'; registered:"):  # nothing close: no suggestion
        load_prior("zzz", 64, "cpu")


def test_module_function_errors_are_one_line(user_module):
    with pytest.raises(BenchError, match=r"^prior 'rb_user_priors:plian': module 'rb_user_priors' has no function "
                                         r"'plian'; did you mean rb_user_priors:plain\?"):
        load_prior("rb_user_priors:plian", 64, "cpu")
    with pytest.raises(BenchError, match=r"^prior 'rb_no_such_module:f': cannot import module 'rb_no_such_module' "
                                         r"\(No module named 'rb_no_such_module'\)"):
        load_prior("rb_no_such_module:f", 64, "cpu")
    with pytest.raises(BenchError, match="has a non-callable attribute 'NOT_CALLABLE'"):
        load_prior("rb_user_priors:NOT_CALLABLE", 64, "cpu")
    with pytest.raises(BenchError, match="gave a int, not a DiffusionPrior"):
        load_prior("rb_user_priors:not_a_prior", 64, "cpu")
    assert isinstance(load_prior("rb_user_priors:plain", 64, "cpu"), GaussianPrior)


def test_speed_options_only_where_the_prior_takes_them(user_module):
    for name in ("gaussian", "rb_user_priors:plain"):
        with pytest.raises(BenchError, match=r"speed option precision=bf16 applies to ADM checkpoints only"):
            load_prior(name, 64, "cpu", speed={"precision": "bf16"})
        with pytest.raises(BenchError, match=r"speed option compile=true applies to ADM checkpoints only"):
            load_prior(name, 64, "cpu", speed={"compile": True})
        # fp32 / false everywhere, and the speed keys that are not the prior's are ignored here
        load_prior(name, 64, "cpu", speed={"precision": "fp32", "compile": False, "channels_last": False,
                                           "checkpointing": False, "tf32": True})
    # a function that declares the keyword receives it
    load_prior("rb_user_priors:speedy", 64, "cpu", speed={"precision": "fp16"})
    assert sys.modules["rb_user_priors"].calls == ["fp16"]
    with pytest.raises(BenchError, match="precision='fp64' is not one of fp32, bf16, fp16"):
        prior_speed_options({"precision": "fp64"})
    with pytest.raises(BenchError, match="compile='yes' must be true or false"):
        prior_speed_options({"compile": "yes"})
    assert prior_speed_options({"precision": "bf16", "channels_last": True, "compile": False}) == {
        "autocast": "bf16", "channels_last": True}


def test_checkpoint_path_with_unet_flags_and_speed_options(checkpoint):
    prior = load_prior(str(checkpoint), 32, "cpu", unet=TINY)
    assert isinstance(prior, ADMPrior) and prior.image_shape == (3, 32, 32) and prior.autocast_dtype is None
    fast = load_prior(str(checkpoint), 32, "cpu", unet=TINY,
                      speed={"precision": "bf16", "channels_last": True, "checkpointing": True})
    assert fast.autocast_dtype is torch.bfloat16 and fast.channels_last
    flags = [m.use_checkpoint for m in fast.unet.modules() if hasattr(m, "use_checkpoint")]
    assert flags and all(flags)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # same weights were loaded
        torch.testing.assert_close(prior.model_output(x, 500)[0], load_prior(
            str(checkpoint), 32, "cpu", unet=dict(TINY), speed={"channels_last": True}).model_output(x, 500)[0],
            atol=1e-5, rtol=0)


def test_checkpoint_path_errors(checkpoint, tmp_path):
    with pytest.raises(BenchError, match=r"a checkpoint path needs its UNet flags: add `unet: ffhq256`"):
        load_prior(str(checkpoint), 32, "cpu")
    with pytest.raises(BenchError, match=r"does not fit the UNet built from flags"):  # preset of another size
        load_prior(str(checkpoint), 32, "cpu", unet="ffhq256")
    with pytest.raises(BenchError, match=r"flags='nope' is not a registered checkpoint"):
        load_prior(str(checkpoint), 32, "cpu", unet="nope")
    with pytest.raises(BenchError, match=r"^prior '\S*absent.pt': checkpoint \S*absent.pt not found: check the path"):
        load_prior(str(tmp_path / "absent.pt"), 32, "cpu", unet=TINY)
    with pytest.raises(BenchError, match="unet: flags apply to checkpoint paths only"):
        load_prior("gaussian", 64, "cpu", unet="ffhq256")
    with pytest.raises(BenchError, match=r"is for images \(3, 32, 32\), the protocol asks for \(3, 64, 64\)"):
        load_prior(str(checkpoint), 64, "cpu", unet=TINY)


def test_identity_of_a_path_records_file_hash_speed_and_flags(checkpoint):
    prior = load_prior(str(checkpoint), 32, "cpu", unet=TINY)
    ident = prior_identity(prior, str(checkpoint), speed={"precision": "fp32"}, unet=TINY)
    assert ident["checkpoint"] == {"file": "my_model.pt",
                                   "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}
    assert ident["unet"] == TINY and "speed" not in ident  # fp32 is the default: identity as before
    fast = prior_identity(prior, str(checkpoint), speed={"precision": "bf16", "compile": True}, unet=TINY)
    assert fast["speed"] == {"compile": True, "precision": "bf16"}
    preset = prior_identity(prior, str(checkpoint), unet="ffhq256")
    assert preset["unet_preset"] == "ffhq256" and preset["unet"]["num_channels"] == 128
    g = load_prior("gaussian", 64, "cpu")
    assert set(prior_identity(g, "gaussian")) == {"name", "class", "image_shape", "parameters"}


def test_missing_checkpoint_only_for_registered_names(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTOREBENCH_CHECKPOINTS", str(tmp_path))
    assert "make checkpoints NAMES=ffhq256" in missing_checkpoint("ffhq256")
    assert missing_checkpoint("ffhq265") is None and missing_checkpoint("gaussian") is None


def test_a_protocol_runs_a_users_checkpoint_with_its_unet_flags(checkpoint, tmp_path):
    """`prior: <path>` + `unet: {flags}` in a protocol: the run uses that network, the record's config names
    the file's sha256 and the flags (so another checkpoint or other flags never share a table row)."""
    from bench import store
    from bench.cli import main
    from test_bench_fakes import protocol
    ds = {"mine": {"label": "Mine", "prior": str(checkpoint), "unet": dict(TINY), "image_size": 32,
                   "manifest": "datasets/demo.json", "root": "datasets/demo", "count": 1}}
    proto = protocol(tmp_path, datasets=ds, tasks={"sr4": {"params": {"factor": 4}}})
    assert main(["run", "--protocol", str(proto), "--results", str(tmp_path / "res")]) == 0
    (rec,) = store.load_records(tmp_path / "res")
    assert rec["status"] == "ok" and rec["nfe_forward"] == 1
    ident = store.load_configs(tmp_path / "res")[rec["config_hash"]]["prior"]
    assert ident["checkpoint"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert ident["unet"]["num_channels"] == TINY["num_channels"] and ident["class"].endswith("ADMPrior")
