import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "100")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ci")
torch.set_num_threads(1)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Triton's mode is process-wide and fixed when its first kernel is built: on a machine without CUDA every
    # Triton kernel a test builds runs in the interpreter, whichever test happens to build one first.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _fresh_once_caches():
    from blockfp8.log import reset_once_caches

    reset_once_caches()
    yield


@pytest.fixture(autouse=True)
def _cute_dsl_only_where_asked(request, monkeypatch):
    """Platform detection sees the optional CuTe DSL only in tests marked ``cute``: the others (candidate lists,
    explain output) must not change with what happens to be installed."""
    if "cute" not in request.keywords:
        from blockfp8 import platform

        monkeypatch.setattr(platform, "_has_cute_dsl", lambda: False)
