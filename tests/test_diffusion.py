"""vico_diffusion on tiny random models of the four supported architectures:
capture leaves outputs unchanged, the graph matches the attention calls the
model really makes, attribution is differentiable to the latent, and flows
agree with the exact oracle."""
import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from vico_diffusion import attribute_denoiser, build_flow_graph, capture_attention
from vico_diffusion import tiny
from vico_diffusion.models import family_of
from vico_flow import Cross, Joint, SpatialSelf, TemporalSelf, st_flow
from vico_flow.oracle import exact_st_flow, widest_path_st_flow

warnings.filterwarnings("ignore", category=FutureWarning)


def unet3d_case():
    m = tiny.tiny_unet3d()
    lat = torch.randn(2, 4, 3, 8, 8)
    return m, lat, lambda x: m(x, 10, encoder_hidden_states=torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(1))).sample


def motion_case():
    m = tiny.tiny_motion_unet()
    lat = torch.randn(1, 4, 3, 8, 8)
    enc = torch.randn(3, 6, 32, generator=torch.Generator().manual_seed(1))  # per frame, as AnimateDiff's pipeline
    return m, lat, lambda x: m(x, 10, encoder_hidden_states=enc).sample


def cogvideox_case():
    m = tiny.tiny_cogvideox(text_len=6)
    lat = torch.randn(1, 2, 4, 8, 8)  # [B, F, C, H, W]
    enc = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1))
    return m, lat, lambda x: m(x, enc, torch.tensor([10])).sample


def latte_case():
    m = tiny.tiny_latte()
    lat = torch.randn(1, 4, 3, 8, 8)
    enc = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1))
    return m, lat, lambda x: m(x, encoder_hidden_states=enc, timestep=torch.tensor([10])).sample


CASES = {"unet3d": unet3d_case, "motion": motion_case, "cogvideox": cogvideox_case, "latte": latte_case}
EXPECTED_KINDS = {  # attention layers of the tiny models, in call order
    "unet3d": None,  # checked against the module names below
    "motion": None,
    "cogvideox": ["Joint", "Joint"],
    "latte": ["SpatialSelf", "Cross", "TemporalSelf", "SpatialSelf", "Cross", "TemporalSelf"],
}


@pytest.fixture(params=list(CASES))
def case(request):
    torch.manual_seed(0)
    return (request.param, *CASES[request.param]())


def test_capture_leaves_outputs_unchanged(case):
    name, model, lat, run = case
    with torch.no_grad():
        ref = run(lat)
        with capture_attention(model) as store:
            out = run(lat)
    assert len(store) > 0
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # restored


def test_records_are_head_averaged_probabilities(case):
    name, model, lat, run = case
    with torch.no_grad(), capture_attention(model) as store:
        run(lat)
    for r in store:
        assert bool((r.probs >= 0).all())
        torch.testing.assert_close(r.probs.sum(-1), torch.ones_like(r.probs.sum(-1)), rtol=1e-5, atol=1e-5)


def test_graph_matches_the_models_attention_calls(case):
    name, model, lat, run = case
    calls = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        calls.append((tuple(q.shape), tuple(k.shape)))
        return original(q, k, v, *a, **kw)

    F.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            run(lat)
    finally:
        F.scaled_dot_product_attention = original
    with torch.no_grad(), capture_attention(model) as store:
        run(lat)
    assert len(store) == len(calls)  # one record per attention call, same order and shapes
    for r, (qs, ks) in zip(store, calls):
        assert (r.batch, r.queries, r.keys) == (qs[0], qs[2], ks[2])
    graph = build_flow_graph(model, store.records, lat.shape)
    attn_layers = [l for l in graph.layers if isinstance(l, (SpatialSelf, TemporalSelf, Cross, Joint))]
    assert len(attn_layers) == len(calls)  # every call became a layer
    kinds = [type(l).__name__ for l in attn_layers]
    fam = family_of(model)
    expected = EXPECTED_KINDS[name] or [
        {"spatial": "SpatialSelf", "temporal": "TemporalSelf", "cross": "Cross"}[fam.classify(r.name)] for r in store
    ]
    assert kinds == expected
    # each layer's map is the conditional sample's slice of its record
    B = lat.shape[0]
    for layer, r in zip(attn_layers, store):
        assert torch.equal(layer.attn.reshape(-1), r.probs.reshape(B, -1)[-1])


def test_attribution_gradient_reaches_the_latent(case):
    name, model, lat, run = case
    x = lat.clone().requires_grad_()
    att, _, graph = attribute_denoiser(model, lambda: run(x), x.shape, [[1], [2, 3]], words=["a", "bc"])
    assert att.values.shape == (2,) and att.heatmaps.shape[0] == 2
    (att.values.sum() + att.heatmaps.mean()).backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0


def test_flows_agree_with_the_exact_oracle(case):
    name, model, lat, run = case
    with torch.no_grad(), capture_attention(model) as store:
        run(lat)
    for grouping in ("grouped", "chained"):
        graph = build_flow_graph(model, store.records, lat.shape, residual="avg", sink_capacity=0.05, grouping=grouping)
        hard = st_flow(graph, [1, 2], mode="hard").group_values.clamp(min=0).double()
        assert torch.equal(hard, widest_path_st_flow(graph, [1, 2], per_group=True))
        if name in ("cogvideox", "latte") or grouping == "grouped":  # keep networkx quick
            exact = exact_st_flow(graph, [1, 2], per_group=True, algorithm="preflow_push")
            assert bool((hard <= exact + 1e-3).all())


def test_unsupported_model_lists_the_supported_ones():
    with pytest.raises(ValueError, match=r"Linear is not supported; supported models: CogVideoXTransformer3DModel, "
                                         r"LatteTransformer3DModel, UNet3DConditionModel, UNetMotionModel"):
        family_of(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"has no diffusers Attention modules"):
        with capture_attention(torch.nn.Linear(2, 2)):
            pass


def test_capture_restores_on_error():
    m, lat, run = unet3d_case()
    with pytest.raises(RuntimeError, match="boom"):
        with capture_attention(m):
            raise RuntimeError("boom")
    assert F.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"
    attn = [mod for mod in m.modules() if type(mod).__name__ == "Attention"][0]
    assert not attn._forward_pre_hooks and not attn._forward_hooks and "get_attention_scores" not in vars(attn)
    with torch.no_grad(), capture_attention(m) as store:  # and capture works again afterwards
        run(lat)
    assert len(store) > 0


def test_word_token_mapping():
    from vico_diffusion.tokenizer import clip_tokenizer, word_token_indices

    tok = clip_tokenizer()
    prompt = "A corgi and a horsey horse, then a dragonfly"
    idx = word_token_indices(tok, prompt, ["corgi", "horse", "dragonfly", "<eot>", 5, "then a"])
    pieces = tok.convert_ids_to_tokens(tok(prompt).input_ids)
    assert pieces[idx[0][0]] == "corgi</w>"
    assert [pieces[i] for i in idx[1]] == ["horse</w>"]  # whole word only, not "horsey"
    assert "".join(pieces[i] for i in idx[2]).replace("</w>", "") == "dragonfly"
    assert pieces[idx[3][0]] == "<|endoftext|>" and idx[4] == [5]
    with pytest.raises(ValueError, match=r"'zebra' is not a word of the prompt"):
        word_token_indices(tok, prompt, ["zebra"])
    with pytest.raises(ValueError, match=r"token position 99 is outside the 77-token prompt"):
        word_token_indices(tok, prompt, [99])


def test_masks_and_scores():
    from vico_diffusion import score_masks, segmentation_masks

    maps = torch.zeros(2, 8, 8)
    maps[:, 2:6, 2:6] = 1.0
    masks = segmentation_masks(maps)
    assert masks.sum() == 2 * 16
    assert score_masks(masks, masks) == {"J": 1.0, "F": 1.0, "J&F": 1.0}
    near = score_masks(torch.roll(masks, 1, dims=-1), masks)  # boundaries within the 1-pixel tolerance
    assert abs(near["J"] - 12 / 20) < 1e-6 and near["F"] == 1.0
    far = score_masks(torch.roll(masks, 3, dims=-1), masks)
    assert abs(far["J"] - 4 / 28) < 1e-6 and 0 < far["F"] < 1
    with pytest.raises(ValueError, match="differ in shape"):
        score_masks(masks, masks[0])


def test_pipeline_attribute_and_report(tmp_path):
    from vico_diffusion import attribute
    from vico_diffusion.report import write_report

    pipe = tiny.tiny_text_to_video_pipeline()
    pipe.set_progress_bar_config(disable=True)
    att = attribute(pipe, "a dog and a horse", ["dog", "horse"], steps=[1], num_inference_steps=2, num_frames=2,
                    height=16, width=16, guidance_scale=5.0, generator=torch.Generator().manual_seed(0))
    assert att.steps == [1] and att.video.shape == (2, 16, 16, 3) and att.heatmaps_pixel.shape == (2, 2, 16, 16)
    paths = write_report(att, str(tmp_path), "a dog and a horse")
    for key in ("st_flow", "cross_attention", "rollout", "overlay", "html", "markdown", "values"):
        assert os.path.getsize(paths[key]) > 0
    with pytest.raises(ValueError, match=r"'cat' is not a word of the prompt"):
        attribute(pipe, "a dog and a horse", ["cat"], num_inference_steps=1)


def test_cli_demo_writes_a_report(tmp_path):
    from vico_diffusion.cli import main

    assert main(["demo", "--out", str(tmp_path), "--steps", "2", "--frames", "2", "--height", "16", "--width", "16"]) == 0
    assert os.path.exists(tmp_path / "report.html") and os.path.exists(tmp_path / "overlay.gif")
    assert main(["demo", "--out", str(tmp_path), "--tokens", "zebra", "--steps", "1"]) == 2


def test_head_averaged_attention_matches_autograd_of_the_formula():
    from vico_diffusion.capture import head_averaged_attention

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(7, 5, generator=g) > 0.2
    mask[:, 0] = True
    for m, causal in ((None, False), (mask, False), (None, True)):
        ref = torch.softmax(q @ k.transpose(-1, -2) * 0.5 + (0 if m is None else torch.where(m, 0.0, -math.inf)), -1)
        if causal:
            ref = torch.softmax((q @ k.transpose(-1, -2) * 0.5).masked_fill(~torch.ones(7, 5, dtype=torch.bool).tril(), -math.inf), -1)
        out = head_averaged_attention(q, k, m, 0.5, causal, query_chunk=3)
        torch.testing.assert_close(out, ref.mean(1))
        assert torch.autograd.gradcheck(lambda a, b: head_averaged_attention(a, b, m, 0.5, causal, 3), (q, k))


@pytest.mark.filterwarnings("error::FutureWarning")  # no deprecated keyword on the way
def test_cli_attribute_loads_a_saved_pipeline(tmp_path):
    # The path real checkpoints take (DiffusionPipeline.from_pretrained), offline.
    from vico_diffusion.cli import main

    pipe = tiny.tiny_text_to_video_pipeline()
    pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    rc = main(["attribute", "--model", str(tmp_path / "model"), "--prompt", "a dog and a horse", "--tokens", "dog",
               "horse", "--out", str(out), "--steps", "2", "--frames", "2", "--height", "16", "--width", "16",
               "--device", "cpu"])
    assert rc == 0 and os.path.exists(out / "report.html") and os.path.exists(out / "values.json")
    assert main(["attribute", "--model", str(tmp_path / "missing"), "--prompt", "a dog", "--tokens", "dog",
                 "--out", str(out), "--device", "cpu"]) == 2
