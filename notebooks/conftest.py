"""pytest --nbval: the notebooks' kernels inherit this environment."""

import os

# One log line per epoch instead of tqdm widgets: stream outputs stay short and readable headless.
os.environ.setdefault("MISTUDY_PROGRESS", "log")
