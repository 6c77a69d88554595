"""Heatmap grids (PNG), animated overlays (GIF), zero-shot masks and their
J (region IoU) and F (boundary F-measure) scores, as in the paper's
segmentation evaluation."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

# A perceptually ordered ramp (dark blue -> cyan -> yellow -> red) at 5 stops.
_STOPS = np.array([[0.05, 0.03, 0.35], [0.1, 0.45, 0.85], [0.2, 0.8, 0.7], [0.95, 0.85, 0.2], [0.85, 0.1, 0.05]])


def colorize(x: np.ndarray) -> np.ndarray:
    """Maps values in [0, 1] to uint8 RGB."""
    x = np.clip(np.nan_to_num(x, nan=0.0), 0.0, 1.0) * (len(_STOPS) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_STOPS) - 2)
    t = (x - lo)[..., None]
    rgb = _STOPS[lo] * (1 - t) + _STOPS[lo + 1] * t
    return (rgb * 255).round().astype(np.uint8)


def _normalize(maps: torch.Tensor) -> np.ndarray:
    """Per word (first dim), scaled to [0, 1] over all its frames; -inf -> 0."""
    m = maps.detach().float().cpu().clone()
    m[~torch.isfinite(m)] = float("nan")
    out = []
    for w in m:
        lo, hi = np.nanmin(w.numpy()), np.nanmax(w.numpy())
        out.append(np.nan_to_num((w.numpy() - lo) / (hi - lo + 1e-12), nan=0.0))
    return np.stack(out)


def heatmap_grid(maps: torch.Tensor, words, path: str, cell: int = 96, title: str | None = None) -> str:
    """PNG grid: one row per word, one column per frame. maps [K, F, h, w]."""
    norm = _normalize(maps)
    K, Fr = norm.shape[:2]
    label_w, top, gap = 110, 22 if title else 0, 3
    img = Image.new("RGB", (label_w + Fr * (cell + gap), top + K * (cell + gap)), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((4, 4), title, fill="black")
    for k in range(K):
        draw.text((4, top + k * (cell + gap) + cell // 2 - 6), str(words[k])[:16], fill="black")
        for f in range(Fr):
            tile = Image.fromarray(colorize(norm[k, f])).resize((cell, cell), Image.NEAREST)
            img.paste(tile, (label_w + f * (cell + gap), top + k * (cell + gap)))
    img.save(path)
    return path


def overlay_gif(maps_pixel: torch.Tensor, video: np.ndarray, words, path: str, alpha: float = 0.5, fps: int = 4) -> str:
    """Animated GIF: the video beside one heatmap overlay per word.
    maps_pixel [K, frames, H, W] on the video's size; video [frames, H, W, 3] uint8."""
    norm = _normalize(maps_pixel)
    frames = []
    for f in range(video.shape[0]):
        panels = [video[f]]
        for k in range(norm.shape[0]):
            heat = colorize(norm[k, min(f, norm.shape[1] - 1)])
            panels.append((video[f] * (1 - alpha) + heat * alpha).astype(np.uint8))
        strip = Image.fromarray(np.concatenate(panels, axis=1))
        canvas = Image.new("RGB", (strip.width, strip.height + 14), "white")
        canvas.paste(strip, (0, 14))
        d = ImageDraw.Draw(canvas)
        for k, w in enumerate(["video"] + [str(x) for x in words]):
            d.text((k * video.shape[2] + 2, 1), w[:12], fill="black")
        frames.append(canvas)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


def segmentation_masks(maps: torch.Tensor) -> torch.Tensor:
    """Zero-shot masks (paper): a pixel is in the mask when its map value
    exceeds the mean of its frame. maps [..., F, H, W] -> bool, same shape."""
    m = maps.detach().float()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return m > m.mean(dim=(-2, -1), keepdim=True)


def _boundary(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of the mask with a 4-neighbour outside it. mask [N, H, W] bool."""
    x = mask.float()[:, None]
    eroded = -torch.nn.functional.max_pool2d(-x, 3, stride=1, padding=1)
    return (x - eroded)[:, 0] > 0


def score_masks(pred: torch.Tensor, truth: torch.Tensor, tolerance: int = 1) -> dict:
    """J: mean region IoU over frames; F: mean boundary F-measure, a boundary
    pixel counting as matched within `tolerance` pixels. pred, truth [..., H, W] bool."""
    if pred.shape != truth.shape:
        raise ValueError(f"score_masks: prediction {tuple(pred.shape)} and truth {tuple(truth.shape)} differ in shape")
    p = pred.reshape(-1, *pred.shape[-2:]).bool()
    t = truth.reshape(-1, *truth.shape[-2:]).bool()
    inter = (p & t).flatten(1).sum(1).float()
    union = (p | t).flatten(1).sum(1).float()
    J = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    bp, bt = _boundary(p), _boundary(t)
    k = 2 * tolerance + 1

    def dilate(b):
        return torch.nn.functional.max_pool2d(b.float()[:, None], k, stride=1, padding=tolerance)[:, 0] > 0

    prec_hit = (bp & dilate(bt)).flatten(1).sum(1).float()
    rec_hit = (bt & dilate(bp)).flatten(1).sum(1).float()
    n_p, n_t = bp.flatten(1).sum(1).float(), bt.flatten(1).sum(1).float()
    precision = torch.where(n_p > 0, prec_hit / n_p.clamp(min=1), (n_t == 0).float())
    recall = torch.where(n_t > 0, rec_hit / n_t.clamp(min=1), (n_p == 0).float())
    Fm = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(precision))
    return {"J": J.mean().item(), "F": Fm.mean().item(), "J&F": (J.mean().item() + Fm.mean().item()) / 2}
