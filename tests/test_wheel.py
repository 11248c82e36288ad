"""What a user installs: the suite built into a wheel, installed into a fresh virtual environment outside the
checkout, and run from there.

The wheel must carry everything the suite needs at run time besides Python code (the CUDA kernels' source, which
is compiled at first use, and the data manifests that ``fetch NAME`` resolves). The fresh environment gets the
wheel alone (``--no-deps``); its dependencies come from the test environment's site-packages through a path
file, so nothing is downloaded again, and ``pip check`` confirms the wheel's declared requirements are met.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED_MODELS = ["digits-classifier", "dna-tiny"]  # ssm_core/pretrained/<name>: weights, model.json and card each
PACKAGE_DATA = ["ssm_core/ops/csrc/selective_scan.cu", "ssm_core/data_manifests/README.md"] + [
    f"ssm_core/data_manifests/{p.name}" for p in (REPO / "ssm_core" / "data_manifests").glob("*.json")] + [
    f"ssm_core/pretrained/{m}/{f}" for m in SHIPPED_MODELS for f in ("model.safetensors", "model.json", "README.md")]

pytestmark = pytest.mark.slow


def _run(cmd, cwd, timeout=900, env=None):
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
          str(REPO)], cwd=out)
    (path,) = out.glob("mamba_seq_suite-*.whl")
    return path


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)], cwd=env)   # nothing in it but the wheel
    python = env / "bin" / "python"
    # --force-reinstall and no PYTHONPATH: a checkout on the path (its .egg-info) must not pass for an install
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          "--force-reinstall", str(wheel)], cwd=env, env=_clean_env())
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=env).stdout.strip())
    # A plain path line: the test environment's packages become importable, its .pth files (such as the
    # editable install's finder, which would map ssm_core back to the checkout) are not run.
    (site / "test_env_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_wheel_carries_kernel_source_and_manifests(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in PACKAGE_DATA if p not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    assert len(PACKAGE_DATA) >= 9   # the .cu, the README, the four manifests and a shipped model at least


def test_installed_wheel_runs_outside_the_checkout(venv_python, tmp_path):
    env = _clean_env()
    _run([sys.executable, "-m", "pip", "--python", str(venv_python), "check"], cwd=tmp_path, env=env)
    smoke = textwrap.dedent("""
        import sys
        from pathlib import Path
        import torch
        import ssm_core, genomics, audio, suite
        from ssm_core import selective_scan
        from ssm_core.ops import scan_cuda
        for package in (ssm_core, genomics, audio, suite):
            assert "site-packages" in package.__file__ and "{repo}" not in package.__file__, package.__file__
        assert scan_cuda.SOURCE.is_file(), scan_cuda.SOURCE
        # the CPU scan against the float64 reference
        g = torch.Generator().manual_seed(0)
        u, delta, z = (torch.randn(2, 8, 100, generator=g) for _ in range(3))
        A = -torch.rand(8, 4, generator=g) - 0.1
        B, C = (torch.randn(2, 4, 100, generator=g) for _ in range(2))
        out = selective_scan(u, delta, A, B, C, z=z, delta_softplus=True, backend="cpu")
        ref = selective_scan(*(t.double() for t in (u, delta, A, B, C)), z=z.double(), delta_softplus=True,
                             backend="reference")
        assert (out.double() - ref).abs().max() < 1e-4
        # every manifest resolves by name from the installed package (nothing is downloaded)
        from genomics.manifests import available_manifests, load_manifest
        from audio.manifests import load_manifest as load_audio_manifest
        assert {{"hg38", "great_apes"}} <= set(available_manifests())
        for name in available_manifests():
            load_manifest(name)
        for name in ("sc09", "youtubemix"):
            load_audio_manifest(name)
        # the shipped models load by name from the installed package, their weights as their cards say
        from ssm_core import from_pretrained
        from ssm_core.models.io import card_sha256, file_sha256, shipped_models
        shipped = shipped_models()
        for name in {models}:
            assert "site-packages" in str(shipped[name]), shipped[name]
            weights = shipped[name] / "model.safetensors"
            assert card_sha256(shipped[name]) == file_sha256(weights), name
            assert sum(p.numel() for p in from_pretrained(name).parameters()) > 0
        print("smoke ok")
    """).format(repo=REPO, models=SHIPPED_MODELS)
    assert "smoke ok" in _run([str(venv_python), "-c", smoke], cwd=tmp_path, env=env).stdout
    from ssm_core import __version__
    for script in ("mamba-genomics", "mamba-audio", "mamba-suite"):  # console commands, the same as python -m
        out = _run([str(venv_python.parent / script), "--version"], cwd=tmp_path, env=env).stdout
        assert out.strip() == f"{script} (mamba-seq-suite) {__version__}", out
    genome = tmp_path / "apes"
    _run([str(venv_python), "-m", "genomics", "simulate", "--out", str(genome), "--size", "tiny"], cwd=tmp_path,
         env=env)
    assert len(list(genome.glob("*.fa"))) == 5
    assert "1.4m" in _run([str(venv_python), "-m", "genomics", "presets"], cwd=tmp_path, env=env).stdout
    digits = tmp_path / "digits"
    _run([str(venv_python), "-m", "audio", "make-digits", "--out", str(digits), "--per-class", "3"], cwd=tmp_path,
         env=env)
    assert len(list(digits.rglob("*.wav"))) == 30
