"""Helpers shared by the tests and the benchmarks: tiny random models, synthetic images, an
in-process Grid, a tiny run config and a private `flwr run` (tests/ and bench/ both import here,
so neither imports the other).

Importing any of it keeps Hugging Face offline: the tiny models are local directories, and
transformers / huggingface_hub read these variables once, when they are first imported.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
