"""LatteTransformer3DModel: alternating spatial blocks (`transformer_blocks`:
attn1 self over the patches of a frame, attn2 cross to the text) and temporal
blocks (`temporal_transformer_blocks`: self over frames per patch).
Latent [B, C, F, H, W]; tokens are patch_size x patch_size patches."""
from vico_flow.graph import Grid

from .common import Family, leaf, text_tokens_from_cross


def classify(name: str) -> str:
    if name.startswith("temporal_transformer_blocks."):
        return "temporal"
    if name.startswith("transformer_blocks."):
        return "spatial" if leaf(name) == "attn1" else "cross"
    return "skip"


def token_grid(model, shape) -> Grid:
    p = model.config.patch_size
    return Grid(shape[2], shape[3] // p, shape[4] // p)


FAMILY = Family(
    name="LatteTransformer3DModel",
    classify=classify,
    token_grid=token_grid,
    text_tokens=text_tokens_from_cross(classify),
)
