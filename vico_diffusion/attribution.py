"""ST-Flow attribution of prompt tokens in diffusers video models.

Two levels:

- `attribute_denoiser(model, run, latent_shape, token_indices)`: one forward
  pass of a denoiser (UNet or transformer) under attention capture, its flow
  graph, and the flows; differentiable with respect to the latent when the
  pass is (this is how guidance reaches the latent).
- `attribute(pipe, prompt, tokens)`: runs a diffusers pipeline's own denoising
  loop, attributes at the chosen steps (hooks on the pipeline's denoiser, so no
  separate pass) and averages them; returns heatmaps at latent and pixel
  resolution with the generated video, plus cross-attention and rollout maps
  from the same captures for comparison.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vico_flow import attention_rollout, cross_attention_attribution, st_flow

from .capture import capture_attention
from .models import build_flow_graph, family_of
from .tokenizer import word_token_indices


@dataclass
class Attribution:
    """Per requested token (word): values [K] and maps [K, F, h, w] on the
    model's token grid; `*_pixel` maps resized to the video [K, frames, H, W]."""

    words: list
    token_indices: list
    values: Tensor
    heatmaps: Tensor
    cross_attention_values: Tensor
    cross_attention: Tensor
    rollout_values: Tensor
    rollout: Tensor
    steps: list = field(default_factory=list)
    video: Optional[np.ndarray] = None  # [frames, H, W, 3] uint8
    heatmaps_pixel: Optional[Tensor] = None
    cross_attention_pixel: Optional[Tensor] = None
    rollout_pixel: Optional[Tensor] = None

    def to_pixels(self, frames: int, height: int, width: int) -> None:
        """Fills the *_pixel maps by trilinear resizing of the token-grid maps."""
        def up(x):
            return F.interpolate(x[None].float(), size=(frames, height, width), mode="trilinear", align_corners=False)[0]

        self.heatmaps_pixel = up(self.heatmaps)
        self.cross_attention_pixel = up(self.cross_attention)
        self.rollout_pixel = up(self.rollout)


def _per_word(values: Tensor, maps: Tensor, groups: list) -> tuple[Tensor, Tensor]:
    """A word split into several tokens: the max over its tokens."""
    v = torch.stack([values[g].amax(0) for g in groups])
    m = torch.stack([maps[g].amax(0) for g in groups])
    return v, m


def _check_token_indices(token_indices) -> list:
    token_indices = [list(g) for g in token_indices]
    if not token_indices or any(not g for g in token_indices):
        raise ValueError("token_indices must be a non-empty list of non-empty position lists")
    return token_indices


def _flows(graph, token_indices: list, mode: str, tau: float, companions: bool) -> list:
    """[(values, maps)] per method (ST-Flow, then cross-attention and rollout
    when `companions`), per word: every distinct token is a source once."""
    token_indices = _check_token_indices(token_indices)
    flat = sorted({t for g in token_indices for t in g})
    bad = [t for t in flat if t >= graph.num_text]
    if bad:
        raise ValueError(f"token positions {bad} are beyond the model's {graph.num_text} text tokens")
    pos = {t: i for i, t in enumerate(flat)}
    groups = [[pos[t] for t in g] for g in token_indices]
    results = [st_flow(graph, flat, mode=mode, tau=tau)]
    if companions:
        with torch.no_grad():
            results += [cross_attention_attribution(graph, flat), attention_rollout(graph, flat)]
    return [_per_word(r.values, r.heatmaps, groups) for r in results]


def _attribution(words, token_indices, flows: list, steps=()) -> Attribution:
    (v, m), *rest = flows
    (cv, cm), (rv, rm) = rest if rest else ((v.detach() * 0, m.detach() * 0),) * 2
    return Attribution(words=list(words), token_indices=token_indices, values=v, heatmaps=m,
                       cross_attention_values=cv, cross_attention=cm, rollout_values=rv, rollout=rm, steps=list(steps))


def attribute_denoiser(
    model: torch.nn.Module,
    run: Callable[[], object],
    latent_shape: Sequence[int],
    token_indices: Sequence[Sequence[int]],
    *,
    mode: str = "soft",
    tau: float = 0.01,
    residual: str = "add",
    grouping: str = "grouped",
    sink_capacity: float = 1.0,
    sample_index: int = -1,
    companions: bool = True,
    words: Optional[list] = None,
    layer_kinds: Optional[Sequence[str]] = None,
):
    """Runs `run()` (one forward pass of `model`) under attention capture and
    computes ST-Flow (and, with `companions`, cross-attention and rollout maps)
    for the given token positions (a list of position lists, one per word).

    layer_kinds: record only these kinds ("spatial", "temporal", "cross",
    "joint"); e.g. ("cross", "temporal") is the paper's VideoCrafter2 graph and
    skips the largest maps (spatial self-attention). Default: all.

    Returns (Attribution, model output, FlowGraph).
    """
    select = _kind_filter(model, layer_kinds)
    token_indices = _check_token_indices(token_indices)  # before the (expensive) model run
    with capture_attention(model, select=select) as store:
        out = run()
    graph = build_flow_graph(model, store.records, latent_shape, sample_index, residual=residual,
                             grouping=grouping, sink_capacity=sink_capacity)
    words = words if words is not None else [str(g) for g in token_indices]
    att = _attribution(words, token_indices, _flows(graph, token_indices, mode, tau, companions))
    return att, out, graph


def _kind_filter(model, layer_kinds):
    """capture_attention's `select` for the requested layer kinds (None: all)."""
    family = family_of(model)  # also: a clear error for unsupported models before running anything
    if layer_kinds is None:
        return None
    kinds = set(layer_kinds)
    bad = kinds - {"spatial", "temporal", "cross", "joint"}
    if bad:
        raise ValueError(f"layer_kinds: unknown kinds {sorted(bad)}; use spatial, temporal, cross, joint")
    return lambda name: family.classify(name) in kinds


def _denoiser(pipe):
    for attr in ("unet", "transformer"):
        m = getattr(pipe, attr, None)
        if isinstance(m, torch.nn.Module):
            return m
    raise ValueError(f"{type(pipe).__name__} has neither a `unet` nor a `transformer` to attribute")


def _latent_of(args, kwargs) -> Tensor:
    for key in ("sample", "hidden_states"):
        if isinstance(kwargs.get(key), Tensor):
            return kwargs[key]
    if args and isinstance(args[0], Tensor):
        return args[0]
    raise ValueError("could not find the latent among the denoiser's arguments")


def attribute(
    pipe,
    prompt: str,
    tokens,
    *,
    steps="all",
    mode: str = "soft",
    tau: float = 0.01,
    residual: str = "add",
    grouping: str = "grouped",
    sink_capacity: float = 1.0,
    layer_kinds: Optional[Sequence[str]] = None,
    **pipe_kwargs,
) -> Attribution:
    """Generates a video with `pipe(prompt, **pipe_kwargs)` and attributes it.

    tokens: words of the prompt (a word split into several tokens maps to all
    of them), "<eot>", or token positions. steps: "all" or a list of denoising
    step indices to attribute (their results are averaged). The pipeline's own
    loop runs once; the attention of an attributed step is freed right after
    its flows are computed.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("attribute: prompt must be a non-empty string")
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"attribute: {type(pipe).__name__} has no tokenizer")
    words = [tokens] if isinstance(tokens, (str, int)) else list(tokens)
    if not words:
        raise ValueError("attribute: tokens is empty; name at least one word or position")
    token_indices = word_token_indices(tokenizer, prompt, words)
    model = _denoiser(pipe)
    select = _kind_filter(model, layer_kinds)
    if steps != "all" and not (isinstance(steps, (list, tuple)) and all(isinstance(s, int) for s in steps)):
        raise ValueError(f"attribute: steps must be 'all' or a list of step indices, got {steps!r}")
    state = {"call": 0, "results": [], "steps": [], "ctx": None}

    def pre(module, args, kwargs):
        i = state["call"]
        if steps == "all" or i in steps:
            state["shape"] = tuple(_latent_of(args, kwargs).shape)
            state["ctx"] = capture_attention(model, select=select)
            state["store"] = state["ctx"].__enter__()
        return None

    def post(module, args, kwargs, output):
        i = state["call"]
        state["call"] += 1
        ctx = state.pop("ctx", None)
        state["ctx"] = None
        if ctx is None:
            return None
        try:
            store = state.pop("store")
            records = list(store.records)
        finally:
            ctx.__exit__(None, None, None)
        graph = build_flow_graph(model, records, state["shape"], -1, residual=residual, grouping=grouping,
                                 sink_capacity=sink_capacity)
        with torch.no_grad():
            state["results"].append(_flows(graph, token_indices, mode, tau, companions=True))
        state["steps"].append(i)
        return None

    h1 = model.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = model.register_forward_hook(post, with_kwargs=True)
    try:
        pipe_kwargs.setdefault("output_type", "np")
        output = pipe(prompt, **pipe_kwargs)
    finally:
        h1.remove()
        h2.remove()
        if state.get("ctx") is not None:  # an error inside the denoiser: leave no capture behind
            state["ctx"].__exit__(None, None, None)
    if not state["results"]:
        raise ValueError(f"attribute: no denoising step matched steps={steps!r} ({state['call']} steps ran)")
    mean = [tuple(torch.stack([r[k][j] for r in state["results"]]).mean(0) for j in range(2)) for k in range(3)]
    att = _attribution([str(w) for w in words], token_indices, mean, state["steps"])
    frames = getattr(output, "frames", None)
    if frames is not None:
        video = np.asarray(frames[0] if isinstance(frames, (list, np.ndarray)) and len(np.shape(frames)) == 5 else frames)
        if video.ndim == 5:
            video = video[0]
        if video.dtype != np.uint8:
            video = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
        att.video = video
        att.to_pixels(video.shape[0], video.shape[1], video.shape[2])
    return att
