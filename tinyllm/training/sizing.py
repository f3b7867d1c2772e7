"""The speedrun's sizing rule: which model, batch, learning rate and number of tokens give the lowest held-out
loss in the time there is. Pure arithmetic on measured speeds (no torch import), so it is tested on its own.

The rule, and where each part comes from (docs/speedrun.md has the data):
- Shape: the one whose budget buys closest to TOKENS_PER_PARAM effective tokens per parameter (without
  embeddings), on a log scale. Chinchilla's rule of thumb is ~20 at 10M-10B parameters; the runs measured here
  (0.1M-5M parameters, 30-120 s on a 2-core CPU, three corpora) were won at 6-10 (benchmarks/speedrun_fit.py,
  benchmarks/speedrun_grid.py). Choosing by the loss model below picked the smallest shape every time, 4% worse.
- Predicted loss: L(t) = E + K / t^g in the seconds t of training (TimeCurve: loss against compute along the
  shapes this rule picks), E and K measured on the user's corpus by two short runs of the smallest shape, g fitted
  here (TIME_EXPONENT). Before those runs (a --dry_run), the loss model L(N, D) = E + A / N^alpha + B / D'^beta
  (Hoffmann et al. 2022, "Chinchilla") with N the parameters without embeddings, D' the effective tokens in bytes of
  text and L in nats per byte; A, alpha, B, beta fitted on this 2-core CPU (benchmarks/speedrun_fit.py, FIT below).
  With one calibration run setting its E, it missed the achieved loss by 5-33% (docs/speedrun.md): one point cannot
  tell a corpus's floor from its slope; two can. Past DATA_BOUND_EPOCHS epochs the prediction is also bounded by
  that loss model with its E and B set by the same two runs: what the corpus allows a shape once data runs out.
- Repeating data: D' = U + U * R* * (1 - exp(-R / R*)), U unique tokens, R = epochs - 1 repeats, R* = 15.4
  (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models": up to ~4 epochs are worth nearly as much
  as fresh data, and the value of further repeats decays with R*). Epochs are capped at `max_epochs` (default 16,
  ~R*: a hard cap at 4 made the rule pick a bigger, under-trained model on a 250k-token corpus, 1.77 against 1.42
  bits per byte in 2 minutes, docs/speedrun.md).
- Tokens per shape: the measured tokens per second of that shape on this device (the probe) times the seconds the
  pretraining stage has.
- Learning rate by width: lr = LR_AT_128 * (128 / width) ** LR_EXPONENT (AdamW; measured up to 256 wide, 1/width
  beyond).
- Tokens per step: TARGET_STEPS optimizer steps (up to 1/8 more), any batch from 8 to 512 sequences.
- Vocabulary: a rule of thumb by corpus size (not fitted: the loss is compared in bits per byte, which the
  tokenizer's size moves little at these scales, while a big vocabulary costs a small model most of its
  parameters).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

__all__ = ["Shape", "shape_ladder", "LossModel", "FIT", "TimeCurve", "TIME_EXPONENT", "EXPONENT_RANGE",
           "lr_for_width", "vocab_for_corpus", "tokens_per_step", "effective_tokens", "effective_seconds",
           "through_calibration", "Candidate", "Choice", "choose", "predicted_loss", "MUENNIGHOFF_R_STAR",
           "block_size_for", "TOKENS_PER_PARAM", "DATA_BOUND_EPOCHS"]

MUENNIGHOFF_R_STAR = 15.4  # their fitted "repeats after which data is worth 1/e as much" for data
# optimizer steps a run is given (its batch follows): fewer and the schedule's warmup and decay dominate a short run.
# Batches were powers of two giving 800-1,600 steps until a built-in 2-minute run whose calibration measured the
# trainer 14% faster doubled its batch, took 922 steps instead of 1,445 and ended 15% worse (docs/speedrun.md):
# now 1.0-1.125 x TARGET_STEPS steps whatever the speed measured.
TARGET_STEPS = 1100
# Effective tokens per parameter (without embeddings) of the best shape in the runs measured here: 6.9 and 8.4 in
# 30 s, 6.1 in 120 s (TinyStories), 9.6 for Tiny Shakespeare (char) in 2 minutes; geometric mean 7.6
# (docs/speedrun.md, "the shape").
TOKENS_PER_PARAM = 8.0
# Past this many epochs a run's predicted loss is also bounded by what its data allows (`choose`): the 800 KB
# TinyStories slice given 15 minutes (6x192, 14 epochs) ended no better than a 70 s run of 2x64, 8% above the time
# curve, and the bound brings such runs (13-18 epochs) within 2.3%. Muennighoff et al.'s ~4 epochs (where repeats
# start to lose value) was tried first: it also bound Tiny Shakespeare at 15 minutes (5x160, 9 epochs, with
# --keep_best), +5.0% against the curve's -0.2%. 10 was chosen on those 18 runs (benchmarks/speedrun_time_curve.py's
# last column), not tested apart from them.
DATA_BOUND_EPOCHS = 10.0


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
    """Context: 128 tokens for the small shapes (what a CPU budget affords; attention cost grows with it), 256
    from 256 wide, 512 from 512 wide; characters carry less text per token, so char runs get twice as many."""
    block = 128 if shape.n_embd < 256 else 256 if shape.n_embd < 512 else 512
    return min(block * (2 if tokenizer_type == "char" else 1), 1024)


@dataclass(frozen=True)
class LossModel:
    """L(N, D) = E + A / N^alpha + B / D^beta in nats per byte of text, D in bytes: units the tokenizer does not
    change (a character tokenizer's token is a byte of English, a BPE token ~3-5). `predict` and `calibrated`
    take tokens and the corpus's bytes per token and speak nats per token, as training logs do."""

    A: float
    alpha: float
    B: float
    beta: float
    E: float = 0.0

    def reducible(self, n_params: float, tokens: float, bytes_per_token: float = 1.0) -> float:
        """Nats per byte above E after `tokens` (effective) tokens of `bytes_per_token` bytes each."""
        return self.A / max(n_params, 1.0) ** self.alpha + self.B / max(tokens * bytes_per_token, 1.0) ** self.beta

    def predict(self, n_params: float, tokens: float, bytes_per_token: float = 1.0) -> float:
        """Validation loss in nats per token."""
        return bytes_per_token * (self.E + self.reducible(n_params, tokens, bytes_per_token))

    def calibrated(self, loss: float, n_params: float, tokens: float, bytes_per_token: float = 1.0,
                   floor: float | None = None) -> "LossModel":
        """The same curve through one measured point (`loss` in nats per token): E = loss per byte - the reducible
        part there (at least `floor`: a loss is never negative, and a short run's point can put E below zero)."""
        e = loss / bytes_per_token - self.reducible(n_params, tokens, bytes_per_token)
        return LossModel(self.A, self.alpha, self.B, self.beta, e if floor is None else max(e, floor))

    def through(self, n_params: float, tokens1: float, loss1: float, tokens2: float, loss2: float,
                bytes_per_token: float = 1.0) -> "LossModel":
        """This corpus's E and B from two runs of one shape on `tokens1` < `tokens2` effective tokens (losses in
        nats per token); A, alpha and beta kept. A longer run no better than the shorter leaves no data term (B = 0:
        the corpus at its floor for this shape)."""
        if tokens2 < tokens1:
            tokens1, loss1, tokens2, loss2 = tokens2, loss2, tokens1, loss1
        d1, d2 = tokens1 * bytes_per_token, tokens2 * bytes_per_token
        l1, l2 = loss1 / bytes_per_token, loss2 / bytes_per_token
        b = (l1 - l2) / (d1 ** -self.beta - d2 ** -self.beta) if d2 > d1 and l2 < l1 else 0.0
        model = LossModel(self.A, self.alpha, b, self.beta)
        return model.calibrated(min(loss1, loss2) if b == 0 else loss2, n_params, tokens2, bytes_per_token)


# The exponent of the held-out loss against training seconds (TimeCurve): chosen on pairs of calibration-length
# runs of the smallest shape, which predicted the 2-minute speedruns on three corpora within 3% at 0.7-0.8. On the 19
# speedruns of two days since, 0.75 is within 5% in 9 (as many as any g from 0.5 to 1; 0.9 has the smallest largest
# error, 18% against 23%): `python benchmarks/speedrun_time_curve.py`, docs/speedrun.md. The best exponent differs
# by corpus (characters ~0.5, a corpus with a hard floor ~2), which two calibration runs cannot tell.
TIME_EXPONENT = 0.75
# the exponents the speedrun shows its prediction's range for: the best g differed by corpus from 0.5 (Tiny
# Shakespeare) to 1.0 (TinyStories) on the speedruns measured (benchmarks/speedrun_time_curve.py)
EXPONENT_RANGE = (0.5, 1.0)


@dataclass(frozen=True)
class TimeCurve:
    """L(t) = E + K / t^g: the held-out loss (nats per token) after t seconds of training on this device and corpus,
    each second spent on the shape the rule picks for that time (Kaplan et al.'s loss against compute, with compute
    in seconds here). E and K are this corpus's, from two calibration runs of different lengths; g is fitted
    (TIME_EXPONENT). Seconds on repeated data count less, as D' counts their tokens (`effective_seconds`)."""

    E: float
    K: float
    g: float = TIME_EXPONENT

    @classmethod
    def through(cls, t1: float, loss1: float, t2: float, loss2: float, g: float = TIME_EXPONENT) -> "TimeCurve":
        """The curve through two measured runs (t1 < t2 seconds). A longer run no better than the shorter (noise, or
        a corpus already at its floor) gives a flat curve at the better loss."""
        if t2 < t1:
            t1, loss1, t2, loss2 = t2, loss2, t1, loss1
        if t2 <= t1 or loss2 >= loss1:
            return cls(min(loss1, loss2), 0.0, g)
        k = (loss1 - loss2) / (t1 ** -g - t2 ** -g)
        return cls(loss2 - k * t2 ** -g, k, g)

    def predict(self, seconds: float) -> float:
        return max(self.E + self.K * max(seconds, 1e-3) ** -self.g, 0.0)


def through_calibration(short: dict, long: dict, n_params: float, unique_tokens: float | None,
                        bytes_per_token: float, g: float = TIME_EXPONENT) -> tuple[TimeCurve, "LossModel"]:
    """The speedrun's two calibration runs of one shape (`n_params`; records with `effective_s`, `tokens` and
    `loss`, as speedrun.json keeps them) as the time curve and the loss model in parameters and tokens (FIT's A,
    alpha and beta; this corpus's E and B) that `choose` predicts with."""
    curve = TimeCurve.through(short["effective_s"], short["loss"], long["effective_s"], long["loss"], g)
    bound = FIT.through(n_params, effective_tokens(short["tokens"], unique_tokens), short["loss"],
                        effective_tokens(long["tokens"], unique_tokens), long["loss"], bytes_per_token)
    return curve, bound


def effective_seconds(seconds: float, tokens: float, unique: float | None) -> float:
    """Training seconds weighted as D' weighs tokens: seconds on a corpus seen for the 10th time count less."""
    if not tokens:
        return seconds
    return seconds * effective_tokens(tokens, unique) / tokens


# Fitted by benchmarks/speedrun_fit.py on this 2-core CPU in nats per byte against bytes: 12 runs of 0.1M-4.8M
# parameters (without embeddings) on the built-in corpus and a TinyStories slice, each corpus its own E
# (docs/speedrun.md has the runs, the command and the residuals: rmse 0.053 nats per byte). The exponents were
# searched within the range published fits give (0.2-0.6); the data put both at its top. Fitted per token instead
# (A 32.7, B 3295), the prediction for a character tokenizer was off by -15% to -32%: a character carries a
# quarter of a BPE token's text.
FIT = LossModel(A=12.5, alpha=0.60, B=1989.0, beta=0.60)
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
    predicted_loss: float
    tokens_per_param: float = 0.0  # effective tokens per parameter without embeddings

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        """The inverse of one of Choice.to_dict's candidates (a plan read back from speedrun.json)."""
        layers, width = map(int, d["shape"].split("x"))
        return cls(Shape(layers, d["n_head"], width), d["params"], d["tokens_per_second"], d["tokens"], d["epochs"],
                   d["predicted_loss"], d["tokens_per_param"])


@dataclass
class Choice:
    shape: Shape
    block_size: int
    learning_rate: float
    tokens: float
    tokens_per_step: int
    steps: int
    seconds: float  # predicted pretraining time
    predicted_loss: float
    epochs: float | None
    capped: bool  # the budget would repeat the corpus more than max_epochs
    reasons: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = {**asdict(self.shape), "name": self.shape.name}
        d["candidates"] = [{**asdict(c), "shape": c.shape.name, "n_head": c.shape.n_head} for c in self.candidates]
        return d


def predicted_loss(n_params: float, tokens: float, tokens_per_second: float, unique_tokens: float | None,
                   loss_model: LossModel, curve: TimeCurve | None = None, bytes_per_token: float = 1.0) -> float:
    """The held-out loss predicted for a shape of `n_params` trained on `tokens` at its speed (see `choose`)."""
    predicted = loss_model.predict(n_params, effective_tokens(tokens, unique_tokens), bytes_per_token)
    if curve is None:
        return predicted
    timed = curve.predict(effective_seconds(tokens / tokens_per_second, tokens, unique_tokens))
    repeated = bool(unique_tokens and tokens > DATA_BOUND_EPOCHS * unique_tokens)
    return max(timed, predicted) if repeated else timed


def choose(speeds: dict[Shape, float], seconds: float, loss_model: LossModel, unique_tokens: float | None,
           tokenizer_type: str = "bpe", max_epochs: float = 16.0, tokens_per_param: float = TOKENS_PER_PARAM,
           bytes_per_token: float = 1.0, curve: TimeCurve | None = None) -> Choice:
    """The shape (of those measured: tokens per second) whose `seconds` of pretraining buy closest to
    `tokens_per_param` effective tokens per parameter, with its batch, learning rate, steps, predicted loss and the
    reasons in words. `loss_model` is in parameters and tokens (of `bytes_per_token` bytes). With a calibrated
    `curve` the predicted loss is the curve's at the shape's (effective) training seconds; past DATA_BOUND_EPOCHS
    epochs the loss model's when that is higher: the curve says what the time buys, the loss model (its E and B this
    corpus's, `LossModel.through`) what the corpus allows a shape of that size once repeated data, not time, is
    what runs out."""
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
        predicted = predicted_loss(n, tokens, tps, unique_tokens, loss_model, curve, bytes_per_token)
        cands.append(Candidate(shape, n, tps, tokens, epochs, predicted, effective / n))

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
    if curve:
        timed = curve.predict(effective_seconds(best.tokens / best.tokens_per_second, best.tokens, unique_tokens))
        reasons.append(f"predicted loss {best.predicted_loss:.3f}: " + (
            "this corpus's loss curve in training seconds" if timed >= best.predicted_loss else
            f"what the corpus allows this shape past {DATA_BOUND_EPOCHS:g} epochs (the loss model in parameters and "
            f"tokens; the time alone would give {timed:.3f})"))
    if unique_tokens:
        reasons.append(f"corpus {unique_tokens / 1e6:.2f}M tokens: {min(best.epochs or 0, max_epochs):.2f} epochs"
                       + (f" (capped at {max_epochs:g}; the budget would buy {best.epochs:.1f})" if capped else ""))
    return Choice(best.shape, block, lr, best.tokens, per_step, steps, best.tokens / best.tokens_per_second,
                  best.predicted_loss, best.epochs, capped, reasons, cands)
