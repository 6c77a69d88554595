"""Attribution cost inside a diffusers model: a VideoCrafter2-shaped tiny
UNet3DConditionModel (real token counts: 16 frames of a 40x64 latent, four
UNet levels, 77 text tokens; few channels, random weights).

Group "VC2-shaped UNet3D fwd+bwd": "baseline" is the model's own forward and
backward (loss on its output, gradient to the latent); "attribution" is the
forward under attention capture (cross + temporal layers, the paper's
VideoCrafter2 graph), grouped soft ST-Flow of 4 tokens, and the backward of the
flow to the latent (what Vico guidance does). x base = the ratio asked for.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from .memory import peak_rss_extra_mb

warnings.filterwarnings("ignore", category=FutureWarning)
_CASE = {}


def _case():
    if not _CASE:
        from vico_diffusion.tiny import tiny_unet3d

        model = tiny_unet3d(channels=(16, 32, 32, 32))
        for p in model.parameters():
            p.requires_grad_(False)
        lat = torch.randn(1, 4, 16, 40, 64)
        enc = torch.randn(1, 77, 32)
        _CASE.update(model=model, lat=lat, enc=enc)
    return _CASE["model"], _CASE["lat"], _CASE["enc"]


@pytest.mark.parametrize("impl", ["baseline", "attribution"])
def test_attribution_overhead(benchmark, impl):
    from vico_diffusion import attribute_denoiser

    model, lat, enc = _case()

    def baseline():
        x = lat.clone().requires_grad_()
        model(x, 10, encoder_hidden_states=enc).sample.square().mean().backward()
        return x.grad

    def attribution():
        x = lat.clone().requires_grad_()
        att, _, _ = attribute_denoiser(model, lambda: model(x, 10, encoder_hidden_states=enc), x.shape,
                                       [[2], [5], [7], [9]], companions=False, layer_kinds=("cross", "temporal"))
        (-att.values.min()).backward()
        return x.grad

    run = baseline if impl == "baseline" else attribution
    benchmark.group = "VC2-shaped UNet3D (16x40x64 latent) fwd+bwd"
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["peak_extra_mb"] = peak_rss_extra_mb(run)
