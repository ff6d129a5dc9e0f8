"""nattn.integrations.diffusers on tiny random HunyuanVideo, Flux and Wan transformers (CPU).

Two independent references: (1) with the window equal to the whole token grid, the patched model
must compute what the unpatched model computes; (2) with small windows, the patched model must
equal the unpatched model whose own processors get an explicit boolean mask built from SPEC.md
(na_reference.neighborhood_mask for visual queries over visual keys, every unpadded text key for
every query), so diffusers' projections, RoPE and SDPA are the oracle.
"""
import math

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import FluxTransformer2DModel, HunyuanVideoTransformer3DModel, WanTransformer3DModel  # noqa: E402

import nattn.integrations.diffusers as nad  # noqa: E402
from na_reference import masked_attention, neighborhood_mask  # noqa: E402
from nattn.integrations.diffusers import (  # noqa: E402
    apply_dense_attention,
    apply_neighborhood_attention,
    joint_attention,
    patched_layers,
    remove_neighborhood_attention,
)

# ---- tiny models and inputs --------------------------------------------------------------------


def hunyuan(dtype):
    m = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(4, 6, 6))
    m = m.to(dtype).eval()
    B, T, H, W = 2, 3, 8, 10  # token grid 3 x 4 x 5
    text_mask = torch.ones(B, 6, dtype=torch.long)
    text_mask[1, 4:] = 0  # the second prompt is padded: its last 2 text tokens are never attended
    inputs = dict(hidden_states=torch.randn(B, 4, T, H, W, dtype=dtype),
                  timestep=torch.tensor([3, 500]), encoder_hidden_states=torch.randn(B, 6, 16, dtype=dtype),
                  encoder_attention_mask=text_mask, pooled_projections=torch.randn(B, 8, dtype=dtype),
                  guidance=torch.tensor([1000.0, 2000.0], dtype=dtype))
    return m, inputs, (3, 4, 5), text_mask.bool()


def flux_ids(h, w):
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


def flux(dtype):
    m = FluxTransformer2DModel(
        patch_size=1, in_channels=8, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=8, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6))
    m = m.to(dtype).eval()
    B, h, w = 2, 6, 7
    inputs = dict(hidden_states=torch.randn(B, h * w, 8, dtype=dtype),
                  encoder_hidden_states=torch.randn(B, 5, 12, dtype=dtype),
                  pooled_projections=torch.randn(B, 8, dtype=dtype), timestep=torch.rand(B, dtype=dtype),
                  img_ids=flux_ids(h, w), txt_ids=torch.zeros(5, 3),
                  guidance=torch.full((B,), 3.5, dtype=dtype))
    return m, inputs, (h, w), None


def wan(dtype):
    m = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=3, rope_max_seq_len=32)
    m = m.to(dtype).eval()
    B = 2
    inputs = dict(hidden_states=torch.randn(B, 4, 3, 8, 10, dtype=dtype), timestep=torch.tensor([10, 500]),
                  encoder_hidden_states=torch.randn(B, 6, 16, dtype=dtype))
    return m, inputs, (3, 4, 5), None


MODELS = {"hunyuan": hunyuan, "flux": flux, "wan": wan}
TEXT_FIRST = {"hunyuan": False, "flux": True, "wan": False}


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


# ---- (1) the whole grid as the window: the original model --------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_whole_grid_window_equals_original(name, dtype):
    model, inputs, grid, _ = MODELS[name](dtype)
    ref = run(model, inputs)
    apply_neighborhood_attention(model, grid)
    assert len(patched_layers(model)) == (3 if name == "wan" else 4)
    out = run(model, inputs)
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    else:
        # bf16: the attention outputs round differently (other kernels, other summation order)
        # and the difference travels through the later blocks: measured up to 1 bf16 ulp of the
        # largest output (0.008-0.012 at |out| ~ 2); bf16 vs fp32 of the same model is 1-10x that.
        err = (out.float() - ref.float()).abs().max().item()
        assert err <= 0.015 * ref.float().abs().max().item(), err
    # Restores diffusers' processors: bitwise the original again.
    remove_neighborhood_attention(model)
    assert patched_layers(model) == {}
    torch.testing.assert_close(run(model, inputs), ref, atol=0, rtol=0)


@pytest.mark.parametrize("text_keys", ["additional", "merge"])
def test_flux_text_padding_mask(text_keys):
    """Flux has no text mask of its own; a boolean key mask given through joint_attention_kwargs
    (text first, then image) is honoured like diffusers' SDPA honours it."""
    model, inputs, grid, _ = flux(torch.float32)
    n_text = inputs["encoder_hidden_states"].shape[1]
    keep = torch.ones(2, n_text + math.prod(grid), dtype=torch.bool)
    keep[0, 3:n_text] = False
    keep[1, 1:n_text] = False
    inputs["joint_attention_kwargs"] = {"attention_mask": keep[:, None, None, :]}
    ref = run(model, inputs)
    apply_neighborhood_attention(model, grid, text_keys=text_keys)
    torch.testing.assert_close(run(model, inputs), ref, atol=2e-5, rtol=1e-4)
    keep[0, -1] = False  # an image token: not a text padding mask
    with pytest.raises(ValueError, match="attention_mask is invalid: it masks visual tokens"):
        run(model, inputs)


@pytest.mark.parametrize("name", ["hunyuan", "flux"])
def test_dense_processors_equal_original(name):
    model, inputs, _, _ = MODELS[name](torch.float32)
    ref = run(model, inputs)
    apply_dense_attention(model)
    torch.testing.assert_close(run(model, inputs), ref, atol=2e-5, rtol=1e-4)


# ---- (2) small windows against diffusers' processors with a SPEC.md mask ------------------------

class MaskedOriginal:
    """diffusers' own processor, given the [B, 1, N, N] boolean mask that SPEC.md defines for
    this layer's window: visual queries see their neighborhood plus every unpadded text key,
    text queries every unpadded key."""

    def __init__(self, original, grid, window, text_first, text_keep):
        self.original, self.grid, self.text_first, self.text_keep = original, grid, text_first, text_keep
        ks, st, dil = window
        self.na_mask = neighborhood_mask(grid, ks, st, dil)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):
        B = hidden_states.shape[0]
        nv = math.prod(self.grid)
        # Every processor here attends over hidden_states and encoder_hidden_states joined.
        n = hidden_states.shape[1] + (0 if encoder_hidden_states is None else encoder_hidden_states.shape[1])
        nt = n - nv
        keep = self.text_keep if self.text_keep is not None else torch.ones(B, nt, dtype=torch.bool)
        keep = keep.to(hidden_states.device)
        mask = torch.zeros(B, 1, n, n, dtype=torch.bool, device=hidden_states.device)
        vis = slice(nt, n) if self.text_first else slice(0, nv)
        txt = slice(0, nt) if self.text_first else slice(nv, n)
        mask[:, :, vis, vis] = self.na_mask.to(hidden_states.device)
        mask[:, :, :, txt] = keep[:, None, None, :]
        mask[:, :, txt, vis] = True
        return self.original(attn, hidden_states, encoder_hidden_states, mask, image_rotary_emb)


WINDOWS = {  # two patched layers with their own windows; the last layer stays dense (original)
    "hunyuan": [((2, 3, 3), (1, 2, 3), (1, 1, 1)), ((3, 2, 2), (2, 1, 2), (1, 2, 2))],
    "flux": [((3, 4), (2, 1), (2, 1)), ((2, 5), (1, 5), (1, 1))],
    "wan": [((2, 3, 3), (2, 3, 1), (1, 1, 1)), ((3, 2, 2), (1, 1, 1), (1, 2, 1))],
}


@pytest.mark.parametrize("name,text_keys", [("hunyuan", "additional"), ("hunyuan", "merge"),
                                            ("flux", "merge"), ("wan", "additional")])
def test_small_windows_equal_masked_original(name, text_keys):
    model, inputs, grid, text_keep = MODELS[name](torch.float32)
    modules = patched_or_attention_modules(model, name)
    originals = [m.processor for m in modules]
    (w0, w1) = WINDOWS[name]
    # Reference: the original processors of layers 0 and 2 with the SPEC mask; the rest untouched.
    for i, w in ((0, w0), (2, w1)):
        modules[i].set_processor(MaskedOriginal(originals[i], grid, w, TEXT_FIRST[name], text_keep))
    ref = run(model, inputs)
    for i in (0, 2):
        modules[i].set_processor(originals[i])
    apply_neighborhood_attention(model, *w0, layers=[0], text_keys=text_keys)
    apply_neighborhood_attention(model, *w1, layers=[-len(modules) + 2], text_keys=text_keys)
    assert sorted(patched_layers(model)) == [0, 2]
    assert modules[1].processor is originals[1]
    out = run(model, inputs)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    # The window matters: the whole-grid output differs (so the comparison above can fail).
    remove_neighborhood_attention(model)
    assert all(m.processor is p for m, p in zip(modules, originals))
    assert (run(model, inputs) - ref).abs().max() > 1e-3


def patched_or_attention_modules(model, name):
    if name == "wan":
        return [b.attn1 for b in model.blocks]
    return [b.attn for b in model.transformer_blocks] + [b.attn for b in model.single_transformer_blocks]


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(MODELS))
def test_on_the_gpu(name, cuda_backend):
    """The same two references with the model and nattn on the GPU."""
    model, inputs, grid, text_keep = MODELS[name](torch.bfloat16)
    model.cuda()
    inputs = {k: v.cuda() for k, v in inputs.items()}
    ref = run(model, inputs)
    for text_keys in ("additional", "merge"):
        apply_neighborhood_attention(model, grid, text_keys=text_keys)
        err = (run(model, inputs).float() - ref.float()).abs().max().item()
        assert err <= 0.015 * ref.float().abs().max().item(), (text_keys, err)
        remove_neighborhood_attention(model)
    model.float()
    inputs = {k: (v.float() if v.is_floating_point() else v) for k, v in inputs.items()}
    modules = patched_or_attention_modules(model, name)
    original = modules[0].processor
    window = WINDOWS[name][0]
    modules[0].set_processor(MaskedOriginal(original, grid, window, TEXT_FIRST[name], text_keep))
    ref = run(model, inputs)
    modules[0].set_processor(original)
    apply_neighborhood_attention(model, *window, layers=[0])
    torch.testing.assert_close(run(model, inputs), ref, atol=2e-3, rtol=2e-3)


# ---- joint_attention itself, against na_reference -----------------------------------------------

@pytest.mark.parametrize("text_first", [False, True])
@pytest.mark.parametrize("mode", ["additional", "merge", "dense", "merge, torch text attention"])
def test_joint_attention_matches_reference(text_first, mode, monkeypatch):
    if mode == "merge, torch text attention":
        # Where nattn.attention has no fused kernel for fewer queries than keys, the text parts
        # run on torch (SDPA for text queries, chunked matmuls for the merged lse).
        monkeypatch.setattr(nad, "_nattn_attention_takes_other_key_count", lambda *a: False)
        mode = "merge"
    dense = mode == "dense"
    grid, nt, B, H, D = (4, 5, 6), 7, 3, 2, 8
    nv = math.prod(grid)
    q, k, v = (torch.randn(B, nv + nt, H, D) for _ in range(3))
    keep = torch.rand(B, nt) < 0.6
    keep[0] = True  # one unpadded prompt, one with no text key at all
    keep[1] = False
    window = ((3, 2, 4), (1, 2, 3), (1, 2, 1))
    out = joint_attention(q, k, v, grid, nt, text_first, keep, kernel_size=None if dense else window[0],
                          stride=window[1], dilation=window[2], text_keys="additional" if dense else mode)
    vis = slice(nt, nv + nt) if text_first else slice(0, nv)
    txt = slice(0, nt) if text_first else slice(nv, nv + nt)
    na = torch.ones(nv, nv, dtype=torch.bool) if dense else neighborhood_mask(grid, *window)
    for b in range(B):
        kt, vt = k[b:b + 1, txt][:, keep[b]], v[b:b + 1, txt][:, keep[b]]
        ref_vis, _ = masked_attention(q[b:b + 1, vis].unflatten(1, grid), k[b:b + 1, vis].unflatten(1, grid),
                                      v[b:b + 1, vis].unflatten(1, grid), na, ak=kt, av=vt)
        torch.testing.assert_close(out[b:b + 1, vis], ref_vis.flatten(1, 3), atol=1e-5, rtol=1e-5)
        k_all = torch.cat([k[b:b + 1, vis], kt], dim=1)
        v_all = torch.cat([v[b:b + 1, vis], vt], dim=1)
        s = (q[b, txt].double().transpose(0, 1) @ k_all[0].double().permute(1, 2, 0)) / math.sqrt(D)
        ref_txt = (s.softmax(-1) @ v_all[0].double().transpose(0, 1)).transpose(0, 1)
        torch.testing.assert_close(out[b, txt], ref_txt.float(), atol=1e-5, rtol=1e-5)


# ---- errors name the argument, its value and the rule -------------------------------------------

def test_errors():
    model, inputs, grid, _ = hunyuan(torch.float32)
    with pytest.raises(TypeError, match="transformer = Linear object is invalid"):
        apply_neighborhood_attention(torch.nn.Linear(2, 2), 3)
    with pytest.raises(ValueError, match=r"layers contains 4, which is invalid: .* 4 attention layers"):
        apply_neighborhood_attention(model, 3, layers=[4])
    with pytest.raises(ValueError, match=r"stride\[1\] = 4 is invalid: must be in \[1, kernel_size\[1\] = 3\]"):
        apply_neighborhood_attention(model, 3, stride=(1, 4, 1))
    with pytest.raises(ValueError, match="kernel_size = .* needs one value per spatial axis"):
        apply_neighborhood_attention(model, (3, 3))
    assert patched_layers(model) == {}  # nothing was installed by the rejected calls
    apply_neighborhood_attention(model, (4, 4, 4))  # larger than the grid's 3 frames
    with pytest.raises(ValueError, match="kernel_size"):
        run(model, inputs)
    remove_neighborhood_attention(model)

    fmodel, finputs, _, _ = flux(torch.float32)
    apply_neighborhood_attention(fmodel, 3)
    finputs["img_ids"] = finputs["img_ids"].flip(0)
    with pytest.raises(ValueError, match="img_ids of shape .* is invalid: nattn needs the row-major grid"):
        run(fmodel, finputs)

    wmodel, _, _, _ = wan(torch.float32)
    wmodel.blocks[0].attn1.set_processor(MaskedOriginal(wmodel.blocks[0].attn1.processor, grid,
                                                        ((2, 2, 2), 1, 1), False, None))
    with pytest.raises(TypeError, match="attention layer 0 has processor MaskedOriginal"):
        apply_neighborhood_attention(wmodel, 2)

    q = torch.randn(1, 12, 1, 8)
    with pytest.raises(ValueError, match="text_keys = 'extra' is invalid: must be one of"):
        apply_neighborhood_attention(model, 2, text_keys="extra")
    with pytest.raises(ValueError, match=r"text_length = 3 is invalid: prod\(grid\) = 6"):
        joint_attention(q, q, q, (2, 3), 3, kernel_size=2)
    with pytest.raises(ValueError, match=r"text_mask = .* is invalid: must be a torch.bool tensor of shape .*\[1, 6\]"):
        joint_attention(q, q, q, (2, 3), 6, text_mask=torch.ones(1, 6), kernel_size=2)
