"""Prints the README's benchmark tables from a stored pytest-benchmark JSON.

    python benchmarks/summarize.py benchmarks/results/cpu-amd-epyc-2core.json
"""
from __future__ import annotations

import collections
import json
import sys


def load(path: str) -> dict:
    groups = collections.defaultdict(dict)
    for b in json.load(open(path))["benchmarks"]:
        groups[b["group"]][b["extra_info"].get("impl", b["name"])] = (b["stats"]["median"], b["extra_info"])
    return groups


def products(g) -> list[str]:
    rows = ["| shape | hard fwd (x matmul) | hard fwd+bwd / fwd | soft fwd (x matmul) | soft bwd / soft fwd | "
            "reference / kernel (hard, soft fwd) | peak MB fwd+bwd (hard, soft) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for shape in ("256^3", "1024^3", "2048^3", "thin 4x4096x4096", "batched 2560x[4x16x16]"):
        t = lambda name, impl="kernel": g[f"{shape} {name}"][impl][0]  # noqa: E731
        ref = "-"
        if "reference" in g[f"{shape} hard fwd"]:
            ref = f"{t('hard fwd', 'reference') / t('hard fwd'):.0f}x, {t('soft fwd', 'reference') / t('soft fwd'):.0f}x"
        mem = [g[f"{shape} {p} fwd+bwd"]["kernel"][1].get("peak_extra_mb") for p in ("hard", "soft")]
        # (a peak within half a MB of what must be created prints as 0, not -0)
        mem_s = ", ".join(f"{m if abs(m) >= 0.5 else 0.0:.0f}" for m in mem) if None not in mem else "-"
        rows.append(
            f"| {shape} | {t('hard fwd') / t('hard fwd', 'torch.matmul'):.2f} | {t('hard fwd+bwd') / t('hard fwd'):.2f} | "
            f"{t('soft fwd') / t('soft fwd', 'torch.matmul'):.1f} | {t('soft fwd+bwd') / t('soft fwd') - 1:.2f} | {ref} | {mem_s} |"
        )
    alternating = [f"{shape}: {g[name]['kernel'][1]['derived']}" for shape in ("1024^3", "2048^3")
                   if (name := f"{shape} hard fwd, fwd+bwd alternating") in g]
    if alternating:
        rows += ["", "Hard fwd+bwd / fwd with the two phases alternating round by round: " + "; ".join(alternating) + "."]
    return rows


def flow(g) -> list[str]:
    rows = ["| graph | hard | soft | networkx Dinic | speed-up (hard, soft) |", "| --- | --- | --- | --- | --- |"]
    for name in sorted((k for k in g if k.startswith("(a)")), key=lambda k: [int(x) for x in k.split() if x.isdigit()]):
        e = g[name]
        ref = e.get("reference")
        speed = f"{ref[0] / e['kernel'][0]:.0f}x, {ref[0] / e['soft'][0]:.0f}x" if ref else "-"
        rows.append(f"| {name[4:]} | {e['kernel'][0] * 1e3:.1f} ms | {e['soft'][0] * 1e3:.1f} ms | "
                    f"{f'{ref[0]:.1f} s' if ref else '(--bench-large)'} | {speed} |")
    rows += ["", "| VideoCrafter2-sized graph | fwd | fwd+bwd | peak MB beyond the captured attention (fwd+bwd) |",
             "| --- | --- | --- | --- |"]
    for name in sorted(k for k in g if k.startswith("(b)")):
        e = g[name]
        if "fwd" in e and "fwd+bwd" in e:
            rows.append(f"| {name[4:]} | {e['fwd'][0]:.3f} s | {e['fwd+bwd'][0]:.3f} s | "
                        f"{e['fwd+bwd'][1].get('peak_extra_mb', float('nan')):.0f} ({e['fwd'][1].get('derived', '').split(': ')[-1]}) |")
    return rows


def diffusion(g) -> list[str]:
    rows = []
    for name, e in g.items():
        if "baseline" in e and "attribution" in e:
            b, a = e["baseline"], e["attribution"]
            rows.append(f"{name}: model fwd+bwd {b[0]:.2f} s (peak {b[1]['peak_extra_mb']:.0f} MB); attribution "
                        f"{a[0]:.2f} s = {a[0] / b[0]:.2f}x (peak {a[1]['peak_extra_mb']:.0f} MB = "
                        f"{a[1]['peak_extra_mb'] / b[1]['peak_extra_mb']:.2f}x)")
    return rows


if __name__ == "__main__":
    g = load(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/cpu-amd-epyc-2core.json")
    print("\n".join(products(g) + [""] + flow(g) + [""] + diffusion(g)))
