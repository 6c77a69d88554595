"""vico_diffusion: ST-Flow attribution for diffusers video models.

    from vico_diffusion import attribute
    att = attribute(pipe, "a dog and a horse", tokens=["dog", "horse"], num_inference_steps=25)
    att.values, att.heatmaps, att.heatmaps_pixel, att.cross_attention, att.rollout

Supported denoisers: UNet3DConditionModel (ZeroScope, ModelScope), UNetMotionModel
(AnimateDiff), CogVideoXTransformer3DModel, LatteTransformer3DModel.
"""
from .attribution import Attribution, attribute, attribute_denoiser
from .capture import AttentionRecord, AttentionStore, capture_attention
from .models import FAMILIES, build_flow_graph
from .tokenizer import clip_tokenizer, word_token_indices
from .visualize import heatmap_grid, overlay_gif, score_masks, segmentation_masks

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "AttentionRecord",
    "AttentionStore",
    "Attribution",
    "attribute",
    "attribute_denoiser",
    "build_flow_graph",
    "capture_attention",
    "clip_tokenizer",
    "heatmap_grid",
    "overlay_gif",
    "score_masks",
    "segmentation_masks",
    "word_token_indices",
]
