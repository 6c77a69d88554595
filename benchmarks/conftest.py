"""pytest-benchmark set-up: options for bigger sizes, and the ratio tables.

pytest-benchmark prints absolute times per group. Every group here holds one
shape and one phase, with the kernel, `torch.matmul` on the same shapes and
(where affordable) the chunked reference, so the summary below divides them:
speed is reported as a ratio to torch.matmul measured in the same run.
"""
from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("vico-flow benchmarks")
    group.addoption(
        "--bench-large",
        action="store_true",
        default=False,
        help="also run the big sizes (reference at 1024^3+, 8192^3 on GPU, big graphs)",
    )


@pytest.fixture
def bench_large(request):
    return request.config.getoption("--bench-large")


def _stats(bench):
    return bench.stats.stats if hasattr(bench.stats, "stats") else bench.stats


def _median(bench):
    return _stats(bench).median


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, dict[str, object]] = {}
    for b in session.benchmarks:
        if not _stats(b).data:  # the benchmark failed before its first round: pytest reports it
            continue
        groups.setdefault(b.group or "", {})[b.extra_info.get("impl", b.name)] = b
    tr = terminalreporter
    tr.section("vico-flow: ratios (same run, same shapes; 'x base' = time / torch.matmul (or the group's baseline row); 'ref / impl' = speed-up over the reference)")
    header = f"{'group':<44} {'impl':<20} {'median s':>10} {'x base':>9} {'ref / impl':>10} {'peak MB':>8}"
    tr.write_line(header)
    tr.write_line("-" * len(header))
    for name in sorted(groups):
        entries = groups[name]
        # the row others are divided by: torch.matmul, or a group's own "baseline"
        base = entries.get("torch.matmul") or entries.get("baseline")
        ref = entries.get("reference")
        for impl, b in sorted(entries.items(), key=lambda kv: (kv[0] != "kernel", kv[0])):
            t = _median(b)
            x_mm = f"{t / _median(base):9.2f}" if base is not None and b is not base else " " * 9
            x_ref = f"{_median(ref) / t:10.1f}" if ref is not None and impl not in ("reference", "torch.matmul", "baseline") else " " * 10
            mem = b.extra_info.get("peak_extra_mb")
            mem_s = f"{mem:8.1f}" if mem is not None else " " * 8
            tr.write_line(f"{name:<44} {impl:<20} {t:10.4f} {x_mm} {x_ref} {mem_s}")
    derived = [b for b in session.benchmarks if "derived" in b.extra_info and _stats(b).data]
    for b in derived:
        tr.write_line(f"{b.group}: {b.extra_info['derived']}")
    # Pairs of groups that the issues compare directly (fwd+bwd vs fwd).
    tr.write_line("")
    for name in sorted(groups):
        if name.endswith(" fwd+bwd"):
            fwd = groups.get(name[: -len(" fwd+bwd")] + " fwd", {}).get("kernel")
            both = groups[name].get("kernel")
            if fwd is not None and both is not None:
                # the minima too: on a shared machine they are the least disturbed rounds
                tr.write_line(f"{name[: -len(' fwd+bwd')]:<44} kernel fwd+bwd / fwd = {_median(both) / _median(fwd):.2f} "
                              f"(medians; minima {_stats(both).min / _stats(fwd).min:.2f})")
    if os.environ.get("VICO_BENCH_NOTE"):
        tr.write_line(os.environ["VICO_BENCH_NOTE"])
