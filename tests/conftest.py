import contextlib

import pytest
import torch
from hypothesis import HealthCheck, settings

from vico_flow import _backends

settings.register_profile(
    "vico",
    deadline=None,
    max_examples=40,
    derandomize=True,
    print_blob=True,
    # the `isa` fixture only selects an instruction set: safe to share between examples
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.load_profile("vico")

EXT = _backends.compiled_extension()
CPU_ISAS = EXT.available_cpu_isas() if EXT is not None else []


@contextlib.contextmanager
def cpu_isa(name):
    """Forces the CPU kernels (float32 and float64) onto one instruction set for the block."""
    EXT.set_cpu_isa(name)
    try:
        yield
    finally:
        EXT.set_cpu_isa("auto")


@pytest.fixture(params=CPU_ISAS)
def isa(request):
    with cpu_isa(request.param):
        yield request.param


def test_compiled_extension_is_built():
    # The CPU kernels are the point of the package: a silent fallback to the
    # reference would pass every other test while being 100x slower.
    assert EXT is not None, "vico_flow._C is not built: pip install --no-build-isolation -e ."
    assert "scalar" in CPU_ISAS
