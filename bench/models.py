"""End-to-end benchmark: neighborhood attention inside real models (issue 13).

  * HunyuanVideo (diffusers HunyuanVideoTransformer3DModel, 720p x 129 frames: 33x45x80 video
    tokens + 256 text tokens) and Flux (FluxTransformer2DModel, 1024x1024: 64x64 image tokens +
    512 text tokens): time of one transformer step (one denoising step, batch 1, bf16, random
    weights created on the GPU) with dense SDPA (cuDNN first; nattn's dense processors, which
    equal diffusers' math), with NA and with GNA (nattn.integrations.diffusers), and the time
    spent in attention in each;
  * NAT-Tiny / DiNAT-Tiny (nattn.models) training steps at 224x224 (batch 32, bf16 autocast,
    AdamW) with nattn, FlexAttention (the same neighborhood as a block mask) and dense SDPA.

usage:
  python bench/models.py                    # everything, on the GPU (about 4-6 minutes on an H100)
  python bench/models.py --only hunyuan     # a part: hunyuan, flux, nat (comma-separated)
  python bench/models.py --quick            # tiny sizes, any device (checks the script on a CPU)
  --blocks D,S      HunyuanVideo dual-/single-stream block counts (default: the whole model, 20,40)
  --json            writes bench/results/<date>-<card>-models[-parts].json and .md (or --out PREFIX)
Progress goes to stderr as it happens; the table is printed last.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

import nattn
import nattn.integrations.diffusers as nad
from nattn.models import NAT, dinat_tiny, nat_tiny

START = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - START:7.1f} s] {msg}", file=sys.stderr, flush=True)


# ---- timing ------------------------------------------------------------------------------------

class Clock:
    """Wall time on the CPU; CUDA events on the GPU (recorded without syncs, read at the end)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(self, a, b) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return a.elapsed_time(b)
        return (b - a) * 1e3

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


@contextmanager
def attention_timer(clock: Clock):
    """Times every joint_attention call the nattn processors make (the whole attention of a
    patched layer, dense or neighborhood). Yields a list that receives (start, end) marks."""
    marks = []
    original = nad.joint_attention

    def timed(*args, **kwargs):
        a = clock.mark()
        out = original(*args, **kwargs)
        marks.append((a, clock.mark()))
        return out

    nad.joint_attention = timed
    try:
        yield marks
    finally:
        nad.joint_attention = original


def time_steps(step, clock: Clock, warmup: int, reps: int, label: str):
    """Median step ms and median attention ms per step over `reps` steps after `warmup`."""
    for i in range(warmup):
        t0 = time.time()
        step()
        clock.sync()
        log(f"  {label}: warm-up step {i + 1}/{warmup}: {time.time() - t0:.2f} s")
    steps, attn = [], []
    for i in range(reps):
        with attention_timer(clock) as marks:
            a = clock.mark()
            step()
            b = clock.mark()
        steps.append(clock.ms(a, b))
        attn.append(sum(clock.ms(x, y) for x, y in marks))
        log(f"  {label}: step {i + 1}/{reps}: {steps[-1]:.1f} ms, attention {attn[-1]:.1f} ms "
            f"({len(marks)} calls)")
    steps.sort()
    attn.sort()
    return steps[len(steps) // 2], attn[len(attn) // 2]


def sdpa_fast():
    """Dense SDPA as fast as torch offers it on this card: cuDNN first, then flash."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch without set_priority: cuDNN only
        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION])


def free(device) -> None:
    """Returns a finished part's memory (the models are gone with their frames) to the card."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- diffusers models --------------------------------------------------------------------------

@contextmanager
def default_dtype_device(dtype, device):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def hunyuan_case(args, device, dtype):
    from diffusers import HunyuanVideoTransformer3DModel
    if args.quick:
        cfg = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16,
                   num_layers=1, num_single_layers=2, num_refiner_layers=1, text_embed_dim=32,
                   pooled_projection_dim=16, rope_axes_dim=(4, 6, 6))
        frames, height, width, n_text = 4, 12, 16, 8  # 4x6x8 tokens
        windows = {"NA": dict(kernel_size=(2, 3, 4)), "GNA": dict(kernel_size=(2, 3, 4), stride=(2, 2, 2))}
    else:
        dual, single = args.blocks
        cfg = dict(num_layers=dual, num_single_layers=single)  # otherwise diffusers' defaults (13B)
        frames, height, width, n_text = 33, 90, 160, 256  # 720p x 129 frames after the VAE; 33x45x80
        windows = {"NA 18x24x24": dict(kernel_size=(18, 24, 24)),
                   "GNA 18x24x24 s16x8x8": dict(kernel_size=(18, 24, 24), stride=(16, 8, 8))}
    with default_dtype_device(dtype, device):
        model = HunyuanVideoTransformer3DModel(**cfg).eval()
    c = model.config
    inputs = dict(
        hidden_states=torch.randn(1, c.in_channels, frames, height, width, device=device, dtype=dtype),
        timestep=torch.tensor([500], device=device),
        encoder_hidden_states=torch.randn(1, n_text, c.text_embed_dim, device=device, dtype=dtype),
        encoder_attention_mask=torch.ones(1, n_text, device=device, dtype=torch.long),
        pooled_projections=torch.randn(1, c.pooled_projection_dim, device=device, dtype=dtype),
        guidance=torch.tensor([6000.0], device=device, dtype=dtype))
    grid = (frames // c.patch_size_t, height // c.patch_size, width // c.patch_size)
    blocks = f"{c.num_layers} dual + {c.num_single_layers} single blocks"
    return model, inputs, grid, n_text, windows, blocks


def flux_case(args, device, dtype):
    from diffusers import FluxTransformer2DModel
    if args.quick:
        cfg = dict(in_channels=8, num_layers=1, num_single_layers=2, attention_head_dim=16,
                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                   axes_dims_rope=(4, 6, 6))
        h = w = 8
        n_text = 8
        windows = {"NA": dict(kernel_size=4), "GNA": dict(kernel_size=4, stride=4)}
    else:
        cfg = dict(guidance_embeds=True)  # FLUX.1-dev's configuration (diffusers' defaults)
        h = w = 64  # 1024x1024: 128x128 latents packed 2x2
        n_text = 512
        windows = {"NA 32x32": dict(kernel_size=32), "GNA 32x32 s16x16": dict(kernel_size=32, stride=16)}
    with default_dtype_device(dtype, device):
        model = FluxTransformer2DModel(**cfg).eval()
    c = model.config
    ids = torch.zeros(h, w, 3, device=device)
    ids[..., 1] = torch.arange(h, device=device)[:, None]
    ids[..., 2] = torch.arange(w, device=device)[None, :]
    inputs = dict(
        hidden_states=torch.randn(1, h * w, c.in_channels, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(1, n_text, c.joint_attention_dim, device=device, dtype=dtype),
        pooled_projections=torch.randn(1, c.pooled_projection_dim, device=device, dtype=dtype),
        timestep=torch.tensor([0.5], device=device, dtype=dtype), img_ids=ids.reshape(-1, 3),
        txt_ids=torch.zeros(n_text, 3, device=device))
    if c.guidance_embeds:
        inputs["guidance"] = torch.tensor([3.5], device=device, dtype=dtype)
    blocks = f"{c.num_layers} dual + {c.num_single_layers} single blocks"
    return model, inputs, (h, w), n_text, windows, blocks


def attention_pairs(grid, n_text, window) -> float:
    """Attended (query, key) pairs of one joint attention: each visual query's neighborhood
    (SPEC.md, stride does not change the count) plus all text keys; text queries see all."""
    nv = math.prod(grid)
    n = nv + n_text
    if window is None:
        return float(n * n)
    ks = window["kernel_size"]
    ks = ks if isinstance(ks, tuple) else (ks,) * len(grid)
    return float(nv * (math.prod(ks) + n_text) + n_text * n)


def na_family(model, grid, n_text, window, device, dtype):
    """The kernel family nattn plans for the visual queries' neighborhood call (nattn.explain:
    nothing runs), or None for the dense baseline."""
    if window is None:
        return None
    c = model.config
    q = torch.empty(1, *grid, c.num_attention_heads, c.attention_head_dim, device=device, dtype=dtype)
    extra = {}
    if window.get("text_keys", "additional") == "additional" and n_text:
        t = torch.empty(1, n_text, c.num_attention_heads, c.attention_head_dim, device=device, dtype=dtype)
        extra = dict(additional_keys=t, additional_values=t)
    try:
        return nattn.explain(q, q, q, window["kernel_size"], stride=window.get("stride", 1), **extra).family
    except Exception as e:  # reported, not fatal
        return f"explain failed: {type(e).__name__}"


def run_diffusers(name, case, args, device, dtype, clock):
    log(f"{name}: building the transformer ({'tiny' if args.quick else 'full size'}, random weights "
        f"on {device})")
    model, inputs, grid, n_text, windows, blocks = case(args, device, dtype)
    n_layers = len(nad._SPECS[type(model).__name__].layers(model))
    log(f"{name}: {blocks}, grid {'x'.join(map(str, grid))} + {n_text} text tokens, {n_layers} "
        f"attention layers")
    warmup, reps = (1, 2) if args.quick else args.steps
    rows = []

    def step():
        with torch.no_grad():
            model(**inputs)

    configs = [("dense SDPA", None)] + [(f"{label} ({text})", dict(window, text_keys=text))
                                        for label, window in windows.items() for text in args.text_keys]
    for label, window in configs:
        nad.remove_neighborhood_attention(model)
        if window is None:
            nad.apply_dense_attention(model)
        else:
            nad.apply_neighborhood_attention(model, **window)
        ctx = sdpa_fast() if device.type == "cuda" else nullcontext()
        try:
            with ctx:
                step_ms, attn_ms = time_steps(step, clock, warmup, reps, f"{name} {label}")
        except Exception as e:  # reported in the table; the other configurations still run
            log(f"  {name} {label}: failed: {type(e).__name__}: {str(e)[:300]}")
            if label == "dense SDPA":
                raise
            step_ms = attn_ms = None
            free(device)
        rows.append(dict(model=name, config=label, window=window, blocks=blocks, grid=list(grid),
                         text_tokens=n_text, na_family=na_family(model, grid, n_text, window, device, dtype),
                         step_ms=step_ms, attention_ms=attn_ms,
                         attention_share=attn_ms / step_ms if step_ms else None,
                         attention_pairs=attention_pairs(grid, n_text, window) * n_layers))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    nad.remove_neighborhood_attention(model)
    if args.with_default:
        step_ms, _ = time_steps(step, clock, warmup, reps, f"{name} diffusers default")
        rows.append(dict(model=name, config="diffusers default processors", window=None, na_family=None, blocks=blocks,
                         grid=list(grid), text_tokens=n_text, step_ms=step_ms, attention_ms=None,
                         attention_share=None, attention_pairs=attention_pairs(grid, n_text, None) * n_layers))
    base = rows[0]
    for r in rows:
        r["speedup"] = base["step_ms"] / r["step_ms"] if r["step_ms"] else None
        r["attention_speedup"] = (base["attention_ms"] / r["attention_ms"]) if r["attention_ms"] else None
        r["flop_limit_attention"] = base["attention_pairs"] / r["attention_pairs"]
    return rows


# ---- NAT / DiNAT training steps ----------------------------------------------------------------

def run_nat(args, device, clock):
    if args.quick:
        small = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], num_classes=10)
        makers = {"NAT (tiny test config)": lambda **kw: NAT(**small, **kw),
                  "DiNAT (tiny test config)": lambda **kw: NAT(**small, dilations=[[2], [1], [2, 1], [1]], **kw)}
        batch, size, warmup, reps = 2, 112, 1, 2
        # FlexAttention has no backward on a CPU.
        backends = ["nattn", "sdpa"] + (["flex"] if device.type == "cuda" else [])
    else:
        makers = {"NAT-Tiny": nat_tiny, "DiNAT-Tiny": dinat_tiny}
        batch, size, warmup, reps = 32, 224, 3, 10
        backends = ["nattn", "sdpa", "flex"]  # flex last: it compiles a kernel per level and dilation
    # FlexAttention compiles one kernel per level and dilation: allow them all.
    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)
    rows = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    for name, make in makers.items():
        for backend in backends:
            torch.manual_seed(0)
            model = make(attention=backend).to(device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            x = torch.randn(batch, 3, size, size, device=device)
            y = torch.randint(0, model.head.out_features, (batch,), device=device)

            def step(model=model, opt=opt, x=x, y=y):
                with autocast:
                    loss = F.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            label = f"{name} {backend}"
            try:
                step_ms, _ = time_steps(step, clock, warmup, reps, label)
            except Exception as e:  # a backend that cannot run here is reported, not fatal
                log(f"  {label}: failed: {type(e).__name__}: {str(e)[:300]}")
                step_ms = None
            rows.append(dict(model=name, attention=backend, batch=batch, image=size, step_ms=step_ms,
                             images_per_s=(batch / step_ms * 1e3) if step_ms else None))
            del model, opt, step
            free(device)
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["attention"] == "nattn")
        r["nattn_speedup"] = (r["step_ms"] / base["step_ms"]) if r["step_ms"] and base["step_ms"] else None
    return rows


# ---- report ------------------------------------------------------------------------------------

def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def markdown(meta, diff_rows, nat_rows) -> str:
    out = [f"# Models end to end ({meta['card']}, {meta['date']})", "",
           f"Card: {meta['card']}, torch {meta['torch']}, diffusers {meta['diffusers']}, nattn commit "
           f"{meta['commit']}. Command: `{meta['command']}`.", ""]
    if diff_rows:
        out += [f"## Transformer step (batch 1, {meta['dtype']}, random weights; one denoising step)", "",
                "| model | blocks | tokens | config | NA family | step ms | x dense | attention ms | attention share | "
                "x dense (attention) | FLOP-wise limit (attention) |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in diff_rows:
            tokens = "x".join(map(str, r["grid"])) + f" + {r['text_tokens']}"
            share = "-" if r["attention_share"] is None else f"{100 * r['attention_share']:.0f}%"
            out.append(f"| {r['model']} | {r['blocks']} | {tokens} | {r['config']} | {r['na_family'] or '-'} | "
                       f"{fmt(r['step_ms'])} | "
                       f"{fmt(r['speedup'], '.2f')} | {fmt(r['attention_ms'])} | {share} | "
                       f"{fmt(r['attention_speedup'], '.2f')} | {fmt(r['flop_limit_attention'], '.2f')} |")
        out += ["", "dense SDPA: nattn's dense processors (diffusers' math, mask-free SDPA with cuDNN "
                "first on a GPU); attention ms: every attention call of the step (CUDA events on a GPU). "
                "(additional): text keys as nattn's additional keys of the NA call; (merge): NA without "
                "them plus attention over the text keys, merged by logsumexp. FLOP-wise limit: dense "
                "attended pairs / attended pairs."]
    if nat_rows:
        out += ["", "## NAT / DiNAT training step (bf16 autocast, AdamW)", "",
                "| model | attention | batch | image | step ms | images/s | x nattn's step time |",
                "|---|---|---|---|---|---|---|"]
        for r in nat_rows:
            out.append(f"| {r['model']} | {r['attention']} | {r['batch']} | {r['image']} | {fmt(r['step_ms'])} | "
                       f"{fmt(r['images_per_s'], '.0f')} | {fmt(r['nattn_speedup'], '.2f')} |")
        out += ["", "sdpa is dense global attention over each level (a different model, the usual "
                "baseline); flex is FlexAttention with the same neighborhood as a block mask."]
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (any device)")
    p.add_argument("--only", default="hunyuan,flux,nat", help="comma-separated parts: hunyuan, flux, nat")
    p.add_argument("--blocks", default="20,40", help="HunyuanVideo dual,single block counts")
    p.add_argument("--steps", default="1,2", help="warm-up,timed steps for the diffusers models")
    p.add_argument("--text-keys", default="additional,merge",
                   help="how NA/GNA visual queries get the text keys: additional (one kernel with "
                        "additional keys), merge (neighborhood and text apart, merged by lse); both by default")
    p.add_argument("--with-default", action="store_true",
                   help="also time diffusers' own processors (masked SDPA for HunyuanVideo)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"],
                   help="diffusers models' dtype (default: bf16 on a GPU, fp32 on a CPU)")
    p.add_argument("--json", action="store_true", help="write bench/results/<date>-<card>-models.{json,md}")
    p.add_argument("--commit", help="the commit the tree was sent from (the device checkout's git may be stale)")
    p.add_argument("--out", help="output prefix instead of bench/results/<date>-<card>-models")
    args = p.parse_args()
    args.blocks = tuple(int(v) for v in args.blocks.split(","))
    args.steps = tuple(int(v) for v in args.steps.split(","))
    args.text_keys = args.text_keys.split(",")
    parts = set(args.only.split(","))
    if not parts <= {"hunyuan", "flux", "nat"}:
        p.error(f"--only {args.only!r}: parts are hunyuan, flux, nat")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.quick:
        p.error("full sizes need a GPU: use --quick on a CPU")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    clock = Clock(device)
    card = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    try:
        import diffusers
        dversion = diffusers.__version__
    except ImportError:
        dversion = None
    try:
        commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                               text=True, cwd=os.path.dirname(os.path.abspath(__file__))
                                               ).stdout.strip() or None
    except OSError:
        commit = None
    meta = dict(card=card, date=datetime.date.today().isoformat(), torch=torch.__version__, diffusers=dversion,
                nattn_library=nattn.library_path, commit=commit, dtype=str(dtype).replace("torch.", ""),
                command=" ".join(["python"] + sys.argv))
    log(f"{card}, torch {torch.__version__}, diffusers {dversion}, parts {sorted(parts)}")

    diff_rows, nat_rows = [], []
    if "hunyuan" in parts:
        diff_rows += run_diffusers("HunyuanVideo", hunyuan_case, args, device, dtype, clock)
        free(device)
    if "flux" in parts:
        diff_rows += run_diffusers("Flux", flux_case, args, device, dtype, clock)
        free(device)
    if "nat" in parts:
        nat_rows = run_nat(args, device, clock)

    report = markdown(meta, diff_rows, nat_rows)
    if args.json or args.out:
        slug = "".join(ch for ch in card.lower().replace("nvidia ", "").split()[0] if ch.isalnum()) or "card"
        name = f"{meta['date']}-{slug}-models" + ("" if parts == {"hunyuan", "flux", "nat"} else
                                                   "-" + "-".join(sorted(parts)))
        prefix = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name)
        with open(prefix + ".json", "w") as f:
            json.dump(dict(meta, transformer_steps=diff_rows, nat_training=nat_rows), f, indent=1)
        with open(prefix + ".md", "w") as f:
            f.write(report)
        log(f"wrote {prefix}.json and {prefix}.md")
    log("done")
    print(report)


if __name__ == "__main__":
    main()
