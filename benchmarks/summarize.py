"""Prints the README's benchmark tables from a stored pytest-benchmark JSON.

    python benchmarks/summarize.py benchmarks/results/cpu-amd-epyc-2core.json
    python benchmarks/summarize.py benchmarks/results/gpu-nvidia-h100.json
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
        if f"{shape} hard fwd" not in g:  # a GPU run: see gpu()
            continue
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
    return rows if len(rows) > 2 else []


def gpu(g) -> list[str]:
    """The GPU suite (groups "gpu <device> <shape> <product> <phase>"): times in
    ms, and in brackets the speed as a share of torch.matmul's on the same shape."""
    names = [k for k in g if k.startswith("gpu ")]
    if not names:
        return []
    device = names[0][4:].split(" 1024^3")[0].split(" 4096^3")[0].split(" thin")[0].split(" batched")[0].split(" VC2")[0]
    pre = f"gpu {device} "
    rows = [f"{device}: ms (speed as a share of torch.matmul float32, TF32 off, same shape and run)", "",
            "| shape | backend | hard fwd | hard fwd+bwd | soft fwd | soft fwd+bwd |", "| --- | --- | --- | --- | --- | --- |"]
    for shape in ("1024^3", "4096^3", "8192^3", "thin 4x4096x4096", "batched 2560x[4x16x16]"):
        if pre + f"{shape} hard fwd" not in g:
            continue
        for impl, label in (("kernel", "cuda"), ("triton", "triton")):
            cells = []
            for product in ("hard", "soft"):
                for phase in ("fwd", "fwd+bwd"):
                    e = g.get(pre + f"{shape} {product} {phase}", {})
                    if impl in e and "torch.matmul" in e:
                        cells.append(f"{e[impl][0] * 1e3:.2f} ({e['torch.matmul'][0] / e[impl][0]:.1%})")
                    else:
                        cells.append("-")
            rows.append(f"| {shape} | {label} | " + " | ".join(cells) + " |")
    notes = []
    for backend in ("cuda", "triton"):
        e = g.get(pre + f"4096^3 hard fwd by dtype ({backend})")
        if e and "baseline" in e:
            halves = ", ".join(f"{k.replace('torch.', '')} {e['baseline'][0] / v[0]:.2f}x" for k, v in sorted(e.items())
                               if k != "baseline")
            notes.append(f"- Half-precision hard fwd at 4096^3 ({backend}), speed against float32: {halves}.")
    for name, e in sorted(g.items()):
        if name.startswith(pre + "VC2") and "fwd" in e and "fwd+bwd" in e:
            notes.append(f"- ST-Flow, {name[len(pre):]}: fwd {e['fwd'][0] * 1e3:.1f} ms, fwd+bwd {e['fwd+bwd'][0] * 1e3:.1f} ms.")
    return rows + ([""] + notes if notes else [])


def flow(g) -> list[str]:
    if not any(k.startswith(("(a)", "(b)")) for k in g):
        return []
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
    sections = [products(g), flow(g), diffusion(g), gpu(g)]
    print("\n\n".join("\n".join(rows) for rows in sections if rows))
