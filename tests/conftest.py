# Import the suite before any test module imports torch, so its OpenMP wait policy applies (see ssm_core/__init__.py).
import ssm_core  # noqa: F401
import pytest


def pytest_configure(config):
    # Here rather than in pyproject.toml, so that the tests know their marks also where they run from an installed
    # wheel, outside the checkout (benchmarks/run_device.sh scan, the wheel smoke test).
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped on CPU; run on the device with `make test-gpu`)")
    config.addinivalue_line("markers", "slow: longer CPU tests (still run in CI)")


@pytest.fixture
def assert_refused(capsys):
    """``assert_refused(status, *texts)``: a command line ended with exit status 1 and one ``error: ...`` line
    naming every one of ``texts``, without a traceback."""
    def check(status, *named):
        err = capsys.readouterr().err
        assert status == 1 and "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and all(text in last for text in named), last
    return check
