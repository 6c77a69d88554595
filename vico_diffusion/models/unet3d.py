"""UNet3DConditionModel (ZeroScope, ModelScope, VideoCrafter2-shaped configs).

Spatial transformers (`attentions`): attn1 self over H x W per frame, attn2
cross to the text. Temporal transformers (`temp_attentions`, `transformer_in`):
both attentions are self-attention over frames per pixel. Latent [B, C, F, H, W].
"""
from .common import Family, bcfhw_grid, leaf, text_tokens_from_cross


def classify(name: str) -> str:
    if ".temp_attentions." in name or name.startswith("transformer_in."):
        return "temporal"
    if ".attentions." in name:
        return "spatial" if leaf(name) == "attn1" else "cross"
    return "skip"


FAMILY = Family(
    name="UNet3DConditionModel",
    classify=classify,
    token_grid=bcfhw_grid,
    text_tokens=text_tokens_from_cross(classify),
)
