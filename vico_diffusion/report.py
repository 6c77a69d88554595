"""A small report of an attribution: images and a table, as Markdown and HTML."""
from __future__ import annotations

import html
import json
import os

from .attribution import Attribution
from .visualize import heatmap_grid, overlay_gif


def write_report(att: Attribution, out_dir: str, prompt: str, title: str = "Vico ST-Flow attribution") -> dict:
    """Writes heatmap grids (ST-Flow, cross-attention, rollout), an overlay GIF
    (when the video is known), values.json, report.md and report.html into
    out_dir. Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for key, maps in (("st_flow", att.heatmaps), ("cross_attention", att.cross_attention), ("rollout", att.rollout)):
        paths[key] = heatmap_grid(maps, att.words, os.path.join(out_dir, f"{key}.png"), title=key.replace("_", " "))
    if att.video is not None and att.heatmaps_pixel is not None:
        paths["overlay"] = overlay_gif(att.heatmaps_pixel, att.video, att.words, os.path.join(out_dir, "overlay.gif"))
    rows = [
        {"word": w, "tokens": t, "st_flow": float(v), "cross_attention": float(c), "rollout": float(r)}
        for w, t, v, c, r in zip(att.words, att.token_indices, att.values, att.cross_attention_values, att.rollout_values)
    ]
    data = {"prompt": prompt, "steps": att.steps, "tokens": rows}
    paths["values"] = os.path.join(out_dir, "values.json")
    with open(paths["values"], "w") as f:
        json.dump(data, f, indent=2)
    weakest = min(rows, key=lambda r: r["st_flow"])["word"]
    md = [f"# {title}", "", f"Prompt: `{prompt}`  ", f"Attributed denoising steps: {att.steps}", "",
          "| word | token positions | ST-Flow | cross-attention max | rollout mass |", "| --- | --- | --- | --- | --- |"]
    md += [f"| {r['word']} | {r['tokens']} | {r['st_flow']:.4f} | {r['cross_attention']:.4f} | {r['rollout']:.4f} |" for r in rows]
    md += ["", f"Weakest token by ST-Flow: **{weakest}** (the one Vico guidance would strengthen).", ""]
    md += [f"![{k}]({os.path.basename(p)})" for k, p in paths.items() if p.endswith((".png", ".gif"))]
    paths["markdown"] = os.path.join(out_dir, "report.md")
    with open(paths["markdown"], "w") as f:
        f.write("\n".join(md) + "\n")
    table = "".join(
        f"<tr><td>{html.escape(r['word'])}</td><td>{r['tokens']}</td><td>{r['st_flow']:.4f}</td>"
        f"<td>{r['cross_attention']:.4f}</td><td>{r['rollout']:.4f}</td></tr>" for r in rows
    )
    imgs = "".join(f'<h3>{k}</h3><img src="{os.path.basename(p)}">' for k, p in paths.items() if p.endswith((".png", ".gif")))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Prompt: <code>{html.escape(prompt)}</code></p>"
            f"<table border=1 cellpadding=4><tr><th>word</th><th>tokens</th><th>ST-Flow</th><th>cross-attention</th>"
            f"<th>rollout</th></tr>{table}</table><p>Weakest token: <b>{html.escape(weakest)}</b></p>{imgs}</body></html>")
    paths["html"] = os.path.join(out_dir, "report.html")
    with open(paths["html"], "w") as f:
        f.write(page)
    return paths
