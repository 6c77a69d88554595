"""Repo-wide pytest set-up.

Plain `pytest` runs the test suite without spending time in benchmarks; the
benchmarks run with `pytest --benchmark-only` (or `pytest benchmarks
--benchmark-only`). TRITON_INTERPRET must be set before any Triton kernel is
defined, so it is set here, before test modules import vico_flow.triton.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    if not config.getoption("benchmark_only", default=False):
        config.option.benchmark_skip = True
