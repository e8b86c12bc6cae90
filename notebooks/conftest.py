"""pytest --nbval: the notebooks' kernels inherit this environment."""

import os
import shutil
import tempfile

# One log line per epoch instead of tqdm widgets: stream outputs stay short and readable headless.
os.environ.setdefault("MISTUDY_PROGRESS", "log")
# The notebooks' default profile becomes "tiny": every code path in seconds (the quick profile trains for minutes).
os.environ.setdefault("MISTUDY_PROFILE", "tiny")
# Runs and figures of the test run go to a scratch folder, not the study's results/ and figures/.
_scratch = tempfile.mkdtemp(prefix="mistudy-nbval-")
os.environ.setdefault("MISTUDY_RESULTS", os.path.join(_scratch, "results"))
os.environ.setdefault("MISTUDY_FIGURES", os.path.join(_scratch, "figures"))


def pytest_unconfigure(config):
    """Remove the scratch folder: the tiny study's checkpoints (DeepLabV3 included) weigh about 1.6 GB."""
    shutil.rmtree(_scratch, ignore_errors=True)


def pytest_collection_modifyitems(items):
    """Every notebook cell is part of a slow test (kernels, training): `pytest -m "not slow"` skips them."""
    import pytest

    for item in items:
        if item.fspath.ext == ".ipynb":
            item.add_marker(pytest.mark.slow)
