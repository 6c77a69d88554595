"""CogVideoXTransformer3DModel: MM-DiT blocks with joint attention over
[text tokens, video tokens] (text first). Latent [B, F, C, H, W]; video tokens
are patch_size x patch_size patches (and patch_size_t frames in CogVideoX 1.5)."""
from vico_flow.graph import Grid

from .common import Family


def classify(name: str) -> str:
    return "joint" if name.startswith("transformer_blocks.") else "skip"


def token_grid(model, shape) -> Grid:
    p = model.config.patch_size
    pt = getattr(model.config, "patch_size_t", None) or 1
    return Grid(max(shape[1] // pt, 1), shape[3] // p, shape[4] // p)


FAMILY = Family(
    name="CogVideoXTransformer3DModel",
    classify=classify,
    token_grid=token_grid,
    text_tokens=lambda model, records: model.config.max_text_seq_length,
)
