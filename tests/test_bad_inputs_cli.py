"""Bad input through the real command line (`python -m bench ...` in a subprocess): exit status 2, one
line on stderr starting with "error:" that names the problem and the fix, never a traceback.

Protocols are tmp copies of bench/protocols/demo.yaml with one field changed and `--limit 1 --solvers
dps --tasks sr4`; every error here happens before any solving. The real solver configs are never
touched: the malformed-YAML case points solvers.base.CONFIG_DIR at a tmp copy inside the subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--limit", "1", "--solvers", "dps", "--tasks", "sr4"]
PREFLIGHT_HEADER = "error: cannot start, nothing was run:"


def bench(tmp_path: Path, *args: str, code: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m bench args` (or `python -c code`) from the repository root, results in tmp_path/results."""
    environ = {**os.environ, "RESTOREBENCH_RESULTS": str(tmp_path / "results"), "PYTHONWARNINGS": "ignore",
               **(env or {})}
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "bench", *args]
    return subprocess.run(cmd, cwd=tmp_path, env={**environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"},
                          capture_output=True, text=True, timeout=300)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single line naming the problem (after the preflight's "cannot start" header, if any)."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), proc.stderr
    assert len(lines) == 1, proc.stderr  # one problem: one line (several would be listed under the header)
    text = lines[0][len("error: "):]
    head = PREFLIGHT_HEADER[len("error: "):] + " "
    return text[len(head):] if text.startswith(head) else text


def demo_protocol(tmp_path: Path, name: str = "bad", **dataset: object) -> Path:
    """demo.yaml with absolute data paths and the given dataset fields changed, written to tmp_path."""
    raw = yaml.safe_load((ROOT / "bench" / "protocols" / "demo.yaml").read_text())
    raw["name"] = name
    ds = raw["datasets"]["demo"]
    ds["manifest"], ds["root"] = str(ROOT / ds["manifest"]), str(ROOT / ds["root"])
    ds.update(dataset)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------- --device
@pytest.mark.parametrize("device,expected", [
    ("tpu", "unknown device 'tpu'; use cpu, cuda, cuda:N (or mps)"),
    ("cuda:x", "unknown device 'cuda:x'; use cpu, cuda, cuda:N (or mps)"),
])
def test_unknown_device(tmp_path, device, expected):
    assert error_line(bench(tmp_path, "run", "--protocol", "demo", *SMALL, "--device", device)) == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA: the CPU-only message cannot show")
def test_cuda_on_a_cpu_only_torch(tmp_path):
    line = error_line(bench(tmp_path, "run", "--protocol", "demo", *SMALL, "--device", "cuda"))
    assert line == (f"device 'cuda' requested but this torch build has no CUDA (torch {torch.__version__}); "
                    f"install a CUDA build of torch or use --device cpu")
    assert not (tmp_path / "results").exists()  # nothing was created


# ----------------------------------------------------------------------------------------- prior:
def test_prior_name_typo(tmp_path):
    line = error_line(bench(tmp_path, "run", "--protocol", str(demo_protocol(tmp_path, prior="gausian")),
                            *SMALL, "--device", "cpu"))
    assert line.startswith("unknown prior 'gausian'; did you mean 'gaussian'? registered: ffhq256, imagenet256")
    assert "module:function" in line and "download" not in line.lower()


def test_prior_module_function_missing(tmp_path):
    (tmp_path / "rb_cli_priors.py").write_text("def build(image_size):\n    raise AssertionError('not called')\n")
    for prior, expected in (
            ("rb_cli_priors:biuld", "prior 'rb_cli_priors:biuld': module 'rb_cli_priors' has no function 'biuld'; "
                                    "did you mean rb_cli_priors:build? define biuld(image_size) returning the prior, "
                                    "or fix the name"),
            ("rb_cli_missing:build", "prior 'rb_cli_missing:build': cannot import module 'rb_cli_missing' (No module "
                                     "named 'rb_cli_missing'); check the name, or run from the folder that holds it / "
                                     "add that folder to PYTHONPATH")):
        proc = bench(tmp_path, "run", "--protocol", str(demo_protocol(tmp_path, prior=prior)), *SMALL,
                     "--device", "cpu")
        assert error_line(proc) == expected


def test_speed_option_on_the_gaussian_prior(tmp_path):
    proc = bench(tmp_path, "run", "--protocol", "demo", *SMALL, "--device", "cpu", "--precision", "bf16")
    assert error_line(proc).startswith("speed option precision=bf16 applies to ADM checkpoints only; "
                                       "prior 'gaussian' does not take it")


# ----------------------------------------------------------------------------------------- results folder
def test_results_folder_is_a_file(tmp_path):
    blocker = tmp_path / "results_file"
    blocker.write_text("not a folder")
    line = error_line(bench(tmp_path, "run", "--protocol", "demo", *SMALL, "--device", "cpu",
                            "--results", str(blocker)))
    assert line == (f"results folder {blocker} is not writable (it is a file, not a folder): choose another "
                    f"with --results DIR or RESTOREBENCH_RESULTS")
    line = error_line(bench(tmp_path, "run", "--protocol", "demo", *SMALL, "--device", "cpu",
                            env={"RESTOREBENCH_RESULTS": str(blocker)}))
    assert line == (f"results folder {blocker / 'demo'} is not writable (a parent of it is a file): choose "
                    f"another with --results DIR or RESTOREBENCH_RESULTS")


# ----------------------------------------------------------------------------------------- solver YAML
def test_malformed_solver_yaml(tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "solvers" / "configs", configs)
    (configs / "dps.yaml").write_text("params:\n  zeta: {value: 1.0, source: x\n  num_steps: 3\n")
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import solvers.base
        solvers.base.CONFIG_DIR = Path({str(configs)!r})   # a broken copy; the real configs stay intact
        from bench.cli import main
        sys.exit(main({["run", "--protocol", "demo", *SMALL, "--device", "cpu"]!r}))
    """)
    line = error_line(bench(tmp_path, code=code))
    assert f"{configs / 'dps.yaml'}: not valid YAML (line 3, column 12): " in line
    assert line.endswith(f"fix the file or `git checkout {configs / 'dps.yaml'}` it")


# ----------------------------------------------------------------------------------------- images
def test_truncated_image_is_named_before_any_work(tmp_path):
    folder = tmp_path / "demo_images"
    shutil.copytree(ROOT / "datasets" / "demo", folder)
    manifest = json.loads((ROOT / "datasets" / "demo.json").read_text())
    first = folder / manifest["images"][0]["file"]
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    manifest["images"][0]["sha256"] = None  # ids only: the manifest check passes, the decode must not
    (tmp_path / "demo.json").write_text(json.dumps(manifest))
    protocol = demo_protocol(tmp_path, root=str(folder), manifest=str(tmp_path / "demo.json"))
    with Image.open(first) as im:  # the header alone still reads
        assert min(im.size) >= 64
    proc = bench(tmp_path, "run", "--protocol", str(protocol), *SMALL, "--device", "cpu")
    assert "Traceback" not in proc.stderr and proc.returncode == 2
    assert f"{first}: cannot decode the image (" in proc.stderr
    assert "re-download or replace the file, then check with `python -m bench data check`" in proc.stderr
    assert not list((tmp_path / "results").rglob("*.jsonl"))  # no record was written
    check = bench(tmp_path, "data", "check", "--protocol", str(protocol))
    assert check.returncode == 2 and "MISMATCH" in check.stdout and f"{first}: cannot decode" in check.stdout
