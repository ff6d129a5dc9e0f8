"""Shared fixtures. Every test draws fresh random inputs (never zeros) from its own seed,
derived from a per-run base seed (printed in the header; set NATTN_TEST_SEED to replay), and
every nattn output is poisoned with NaN before the call that must write it."""
import os
import random
import zlib

import pytest
import torch

_BASE_SEED = int(os.environ.get("NATTN_TEST_SEED", random.SystemRandom().randrange(2**31)))

# Outputs and gradients start as NaN (python/nattn/_ops.py): an element a backend does not
# write fails the comparisons instead of passing on whatever the allocator left there.
os.environ.setdefault("NATTN_POISON_OUTPUTS", "1")


def pytest_report_header(config):
    import nattn
    return [f"nattn: library {nattn.library_path}, NATTN_TEST_SEED={_BASE_SEED}, "
            f"torch {torch.__version__}",
            "nattn backends: " + ", ".join(
                f"{b.name}={'yes' if b.available else 'no (' + b.reason + ')'}"
                for b in nattn.backends())]


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(_BASE_SEED ^ zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def cuda_backend():
    """For tests that need nattn's CUDA backend: skips when this build has none, unless
    NATTN_REQUIRE_CUDA=1 (set it where the CUDA backend must be tested), which fails instead."""
    import nattn
    info = {b.name: b for b in nattn.backends()}["cuda"]
    if not info.available:
        if os.environ.get("NATTN_REQUIRE_CUDA") == "1":
            pytest.fail(f"NATTN_REQUIRE_CUDA=1 but the CUDA backend is unavailable: {info.reason}")
        pytest.skip(f"nattn CUDA backend unavailable: {info.reason}")


def pytest_collection_modifyitems(config, items):
    # CUDA tests need torch.cuda; with NATTN_REQUIRE_CUDA=1 (the GPU machine) a missing
    # CUDA backend fails them instead of skipping.
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="torch.cuda is not available")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device")
