# Import the suite before any test module imports torch, so its OpenMP wait policy applies (see ssm_core/__init__.py).
import ssm_core  # noqa: F401
import pytest


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
