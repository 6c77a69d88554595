"""UNetMotionModel (AnimateDiff): spatial transformers as in Stable Diffusion
(`attentions`: attn1 self, attn2 cross) and motion modules (`motion_modules`:
self-attention over frames per pixel). Latent [B, C, F, H, W]."""
from .common import Family, bcfhw_grid, leaf, text_tokens_from_cross


def classify(name: str) -> str:
    if ".motion_modules." in name:
        return "temporal"
    if ".attentions." in name:
        return "spatial" if leaf(name) == "attn1" else "cross"
    return "skip"


FAMILY = Family(
    name="UNetMotionModel",
    classify=classify,
    token_grid=bcfhw_grid,
    text_tokens=text_tokens_from_cross(classify),
)
