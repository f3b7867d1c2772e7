"""Liger-style fused replacements for transformers' Llama module forwards, measured in a plain training loop
(forward + backward + AdamW, nanoGPT's CPU shape: 4 layers, 4 heads, 128 wide, context 64, batch 12) against the
unpatched model and nanoGPT's own model from its checkout, interleaved, median of --steps steps. Prints the largest
logit difference of each patched model against the unpatched one (same weights) and the step times.

    python benchmarks/fused_patches.py --nanogpt_dir /path/to/nanoGPT

The patches (an experiment: tinyllm does not apply them, none was faster beyond noise; benchmarks/RESULTS.md):
RMSNorm as one autograd Function with a hand-written backward, rotary embeddings as one multiply-add on a
pre-signed sine, the gate and up projections as one matmul.
"""

import argparse
import statistics
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--nanogpt_dir", required=True)
parser.add_argument("--steps", type=int, default=40)
ARGS = parser.parse_args()
sys.path.insert(0, str(Path(ARGS.nanogpt_dir).resolve()))
import transformers.models.llama.modeling_llama as ml  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402  nanoGPT's own model, from the checkout
from timing import interleaved_times  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from tinyllm.config import ModelArguments  # noqa: E402
from tinyllm.modeling import build_config  # noqa: E402


class RMSFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, eps):
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, w)
        return xhat * w

    @staticmethod
    def backward(ctx, g):
        xhat, rstd, w = ctx.saved_tensors
        gw = (g * xhat).reshape(-1, g.shape[-1]).sum(0)
        gx = g * w
        gx = rstd * (gx - xhat * (gx * xhat).mean(-1, keepdim=True))
        return gx, gw, None

def rms_fwd(self, h):
    if h.dtype != torch.float32:
        return self._orig(h)
    return RMSFn.apply(h, self.weight, self.variance_epsilon)

_cache = {}
def signed_sin(sin):
    key = (sin.data_ptr(), sin.shape)
    v = _cache.get(key)
    if v is None or v[0] is not sin:
        h = sin.shape[-1] // 2
        s = torch.cat((-sin[..., :h], sin[..., h:]), dim=-1)
        _cache.clear()
        _cache[key] = (sin, s)
        return s
    return v[1]

def rope(q, k, cos, sin, unsqueeze_dim=1):
    s = signed_sin(sin).unsqueeze(unsqueeze_dim)
    cos = cos.unsqueeze(unsqueeze_dim)
    def one(x):
        d = x.shape[-1]
        sw = x.unflatten(-1, (2, d // 2)).flip(-2).flatten(-2)
        return torch.addcmul(x * cos, sw, s)
    return one(q), one(k)

def mlp_fwd(self, x):
    w = torch.cat((self.gate_proj.weight, self.up_proj.weight))
    g, u = F.linear(x, w).chunk(2, dim=-1)
    return self.down_proj(F.silu(g) * u)

def build(which):
    torch.manual_seed(0)
    if which == "nanoGPT":
        model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False))
        return model, (lambda x, y: model(x, y)[1])
    cfg = build_config(ModelArguments(model_type="llama", preset="nano"), 65, 64, 0, 1, 2)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    if "rms" in which:
        for mod in model.modules():
            if isinstance(mod, ml.LlamaRMSNorm):
                mod._orig = mod.forward
                mod.forward = types.MethodType(rms_fwd, mod)
    if "mlp" in which:
        for mod in model.modules():
            if isinstance(mod, ml.LlamaMLP):
                mod.forward = types.MethodType(mlp_fwd, mod)
    return model, (lambda x, y: model(input_ids=x, labels=y).loss)

NAMES = ["nanoGPT", "llama", "llama+rms", "llama+mlp", "llama+rope", "llama+rms+mlp+rope"]


def main() -> int:
    orig_rope = ml.apply_rotary_pos_emb
    setups = {n: build(n) for n in NAMES}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True) for n, (m, _) in setups.items()}
    x = torch.randint(0, 65, (12, 64))

    def step(n):
        ml.apply_rotary_pos_emb = rope if "rope" in n else orig_rope
        _, loss_fn = setups[n]
        loss_fn(x, x).backward()
        opts[n].step()
        opts[n].zero_grad(set_to_none=True)

    with torch.no_grad():  # same weights: the patched models must compute what the unpatched one does
        for n in NAMES[2:]:
            setups[n][0].load_state_dict(setups["llama"][0].state_dict())
        outs = {}
        for n in NAMES[1:]:
            ml.apply_rotary_pos_emb = rope if "rope" in n else orig_rope
            outs[n] = setups[n][0](input_ids=x).logits
    times = interleaved_times(NAMES, step, ARGS.steps)
    ml.apply_rotary_pos_emb = orig_rope
    base = statistics.median(times["nanoGPT"])
    print(f"\nforward + backward + AdamW, batch 12 x 64, median of {ARGS.steps} interleaved steps\n")
    print("| model | ms / step | vs nanoGPT | max abs logit difference vs unpatched |\n|---|---:|---:|---:|")
    for n in NAMES:
        ms = statistics.median(times[n]) * 1000
        diff = f"{(outs[n] - outs['llama']).abs().max().item():.1e}" if n in NAMES[2:] else ""
        print(f"| {n} | {ms:.1f} | {base / ms * 1000:.2f}x | {diff} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
