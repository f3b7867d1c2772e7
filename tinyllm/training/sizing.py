"""The speedrun's sizing rule: which model, batch, learning rate and number of tokens give the lowest held-out
loss in the time there is. Pure arithmetic on measured speeds (no torch import), so it is tested on its own.

The rule, and where each part comes from (docs/speedrun.md has the data):
- Shape: the one whose budget buys closest to TOKENS_PER_PARAM effective tokens per parameter (without
  embeddings), on a log scale. Chinchilla's rule of thumb is ~20 at 10M-10B parameters; the runs measured here
  (0.1M-5M parameters, 30-120 s on a 2-core CPU, three corpora) were won at 6-10 (benchmarks/speedrun_fit.py,
  benchmarks/speedrun_grid.py). Choosing by a loss model fitted to those runs picked the smallest shape every time,
  4% worse.
- Repeating data: D' = U + U * R* * (1 - exp(-R / R*)), U unique tokens, R = epochs - 1 repeats, R* = 15.4
  (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models": up to ~4 epochs are worth nearly as much
  as fresh data, and the value of further repeats decays with R*). Epochs are capped at `max_epochs` (default 16,
  ~R*: a hard cap at 4 made the rule pick a bigger, under-trained model on a 250k-token corpus, 1.77 against 1.42
  bits per byte in 2 minutes, docs/speedrun.md).
- Tokens per shape: the measured tokens per second of that shape on this device (the probe) times the seconds the
  pretraining stage has.
- Learning rate by width: lr = LR_AT_128 * (128 / width) ** LR_EXPONENT (AdamW; measured up to 256 wide, 1/width
  beyond).
- Context: 256 BPE tokens from 128 wide, 128 under it (block_size_for: a block's first tokens cost twice the rest,
  and 128-token blocks ended 1.035x the hand grid's best at 4x128, 256-token 0.995x).
- Tokens per step: TARGET_STEPS optimizer steps (up to 1/8 more), any batch from 8 to 512 sequences.
- Vocabulary: a rule of thumb by corpus size (not fitted: the loss is compared in bits per byte, which the
  tokenizer's size moves little at these scales, while a big vocabulary costs a small model most of its
  parameters).
The loss is not predicted here: the pretraining run forecasts its own (training/forecast.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

__all__ = ["Shape", "shape_ladder", "lr_for_width", "vocab_for_corpus", "tokens_per_step", "effective_tokens",
           "Candidate", "Choice", "choose", "MUENNIGHOFF_R_STAR", "block_size_for", "TOKENS_PER_PARAM"]

MUENNIGHOFF_R_STAR = 15.4  # their fitted "repeats after which data is worth 1/e as much" for data
# optimizer steps a run is given (its batch follows): fewer and the schedule's warmup and decay dominate a short run.
# Batches were powers of two giving 800-1,600 steps until a built-in 2-minute run whose calibration (since removed)
# measured the trainer 14% faster doubled its batch, took 922 steps instead of 1,445 and ended 15% worse
# (docs/speedrun.md): now 1.0-1.125 x TARGET_STEPS steps whatever the speed measured.
TARGET_STEPS = 1100
# Effective tokens per parameter (without embeddings) of the best shape in the runs measured here: 6.9 and 8.4 in
# 30 s, 6.1 in 120 s (TinyStories), 9.6 for Tiny Shakespeare (char) in 2 minutes; geometric mean 7.6
# (docs/speedrun.md, "the shape").
TOKENS_PER_PARAM = 8.0


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_head: int
    n_embd: int

    @property
    def name(self) -> str:
        return f"{self.n_layer}x{self.n_embd}"

    def non_embedding_params(self) -> int:
        """Llama block: attention 4 w^2, SwiGLU MLP 3 * w * inter (inter ~ 8/3 w rounded to 64), two norms."""
        inter = max(64, 64 * round(8 * self.n_embd / 3 / 64))
        return self.n_layer * (4 * self.n_embd ** 2 + 3 * self.n_embd * inter + 2 * self.n_embd) + self.n_embd


# Depth and width grow together (as in nanochat's depth -> width rule), head size 32 below 256 wide, 64 above.
_LADDER = [(2, 64), (3, 96), (4, 128), (5, 160), (6, 192), (6, 256), (8, 320), (8, 384), (8, 512), (10, 640),
           (12, 768)]


def shape_ladder(max_width: int = 768) -> list[Shape]:
    out = []
    for n_layer, width in _LADDER:
        if width <= max_width:
            out.append(Shape(n_layer, width // (32 if width < 256 else 64), width))
    return out


def block_size_for(shape: Shape, tokenizer_type: str) -> int:
    """Context: BPE tokens get 128 under 128 wide (what a CPU budget affords; attention cost grows with it), 256
    from 128 wide, 512 from 512 wide. A block's first tokens cost about twice the rest (their document began in
    the block before): at 4x128 on the built-in corpus 128-token blocks ended 1.035x the hand grid's best in 15
    minutes, 256-token blocks 0.991x (benchmarks/loss_by_position.py, docs/speedrun.md). Characters carry less
    text per token: char runs get 256 under 256 wide (where Tiny Shakespeare's runs matched the grid), 512 from
    256 wide, 1024 from 512 wide."""
    if tokenizer_type == "char":
        return 256 if shape.n_embd < 256 else 512 if shape.n_embd < 512 else 1024
    return 128 if shape.n_embd < 128 else 256 if shape.n_embd < 512 else 512


# AdamW's best peak rate measured at 64, 128 and 256 wide (three rates each, 75 s runs on TinyStories): ~3.3e-3 at
# every width (a power law through the three best has exponent -0.10, i.e. flat). Wider shapes were not measured
# here; above 256 the rate falls as 1/width (muP's rule for hidden matrices), an assumption, not a fit.
LR_AT_128 = 3.3e-3
LR_EXPONENT = 0.0
LR_MEASURED_WIDTH = 256
LR_MAX = 6e-3


def lr_for_width(width: int) -> float:
    lr = LR_AT_128 * (128 / width) ** LR_EXPONENT
    if width > LR_MEASURED_WIDTH:
        lr *= LR_MEASURED_WIDTH / width
    return min(lr, LR_MAX)


def vocab_for_corpus(corpus_bytes: int) -> int:
    """BPE vocabulary by corpus size: 1024 under 2 MB, 2048 under 20 MB, 4096 under 200 MB, else 8192."""
    for limit, vocab in ((2 << 20, 1024), (20 << 20, 2048), (200 << 20, 4096)):
        if corpus_bytes < limit:
            return vocab
    return 8192


def tokens_per_step(total_tokens: float, block_size: int) -> int:
    """Sequences of the block per step giving at least TARGET_STEPS steps, and at most 1/8 more (the most
    sequences that do, rounded down to a step of an eighth of their number, so that they split into micro-batches):
    8 to 512 sequences."""
    seqs = total_tokens / (TARGET_STEPS * block_size)
    grain = 1 if seqs < 16 else 2 if seqs < 32 else 4 if seqs < 64 else 8
    return min(max(grain * int(seqs // grain), 8), 512) * block_size


def effective_tokens(tokens: float, unique: float | None) -> float:
    """Muennighoff et al.'s D': repeated epochs count less and less."""
    if not unique or tokens <= unique:
        return tokens
    repeats = tokens / unique - 1
    return unique + unique * MUENNIGHOFF_R_STAR * (1 - math.exp(-repeats / MUENNIGHOFF_R_STAR))


@dataclass(frozen=True)
class Candidate:
    shape: Shape
    params: int  # without embeddings
    tokens_per_second: float  # measured
    tokens: float  # what the budget buys, capped at max_epochs
    epochs: float | None  # uncapped: what the budget would buy
    tokens_per_param: float = 0.0  # effective tokens per parameter without embeddings


@dataclass
class Choice:
    shape: Shape
    block_size: int
    learning_rate: float
    tokens: float
    tokens_per_step: int
    steps: int
    seconds: float  # predicted training time
    epochs: float | None
    capped: bool  # the budget would repeat the corpus more than max_epochs
    reasons: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = {**asdict(self.shape), "name": self.shape.name}
        d["candidates"] = [{**asdict(c), "shape": c.shape.name, "n_head": c.shape.n_head} for c in self.candidates]
        return d


def choose(speeds: dict[Shape, float], seconds: float, unique_tokens: float | None, tokenizer_type: str = "bpe",
           max_epochs: float = 16.0, tokens_per_param: float = TOKENS_PER_PARAM) -> Choice:
    """The shape (of those measured: tokens per second) whose `seconds` of training buy closest to
    `tokens_per_param` effective tokens per parameter, with its batch, learning rate, steps and the reasons in
    words."""
    if not speeds:
        raise ValueError("no shape was measured")
    cands = []
    cap = max_epochs * unique_tokens if unique_tokens else None
    for shape, tps in speeds.items():
        affordable = tps * seconds
        tokens = min(affordable, cap) if cap else affordable
        n = shape.non_embedding_params()
        effective = effective_tokens(tokens, unique_tokens)
        epochs = affordable / unique_tokens if unique_tokens else None
        cands.append(Candidate(shape, n, tps, tokens, epochs, effective / n))

    def distance(c: Candidate) -> float:
        return abs(math.log(max(c.tokens_per_param, 1e-9) / tokens_per_param))

    # a shape that would repeat the corpus more than max_epochs would end early (its tokens are capped): it is
    # chosen only when every shape would
    fits = [c for c in cands if not (c.epochs and c.epochs > max_epochs)]
    ranked = sorted(fits or cands, key=distance)
    best = ranked[0] if fits else min(cands, key=lambda c: c.epochs or 0)
    block = block_size_for(best.shape, tokenizer_type)
    per_step = tokens_per_step(best.tokens, block)
    steps = max(int(best.tokens // per_step), 1)
    capped = bool(best.epochs and best.epochs > max_epochs)
    lr = lr_for_width(best.shape.n_embd)
    reasons = [
        f"shape {best.shape.name} ({best.params / 1e6:.2f}M parameters without embeddings): of the {len(fits)} of "
        f"{len(cands)} shapes measured here that fit the corpus, the closest to {tokens_per_param:g} effective "
        f"tokens per parameter, the best ratio in the runs measured for this rule ("
        + ", ".join(f"{c.shape.name} {c.tokens_per_param:.1f}" for c in ranked[:4]) + ")",
        f"{best.tokens / 1e6:.2f}M tokens = {best.tokens_per_second:,.0f} tokens/s measured x "
        f"{best.tokens / best.tokens_per_second:.0f} s",
        f"learning rate {lr:.2g}: measured best {LR_AT_128:g} at widths 64-256"
        + (f", x 256/{best.shape.n_embd} beyond" if best.shape.n_embd > LR_MEASURED_WIDTH else ""),
        f"{per_step:,} tokens per step ({per_step // block} x {block}): ~{steps} steps",
    ]
    if unique_tokens:
        reasons.append(f"corpus {unique_tokens / 1e6:.2f}M tokens: {min(best.epochs or 0, max_epochs):.2f} epochs"
                       + (f" (capped at {max_epochs:g}; the budget would buy {best.epochs:.1f})" if capped else ""))
    return Choice(best.shape, block, lr, best.tokens, per_step, steps, best.tokens / best.tokens_per_second,
                  best.epochs, capped, reasons, cands)
