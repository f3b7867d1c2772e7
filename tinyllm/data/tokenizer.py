"""Train byte-level BPE or char-level tokenizers with `tokenizers`, with special and chat tokens reserved.

Special tokens are reserved at training time so later stages never add tokens (adding tokens after LoRA
training is what breaks save/merge/load for many users):

  <|begin_of_text|>  bos, prepended to every document by the post-processor
  <|end_of_text|>    eos, appended after every document when packing
  <|pad|>            padding (pad != eos, so padding masks never hide the real end of a text)
  <|im_start|>, <|im_end|>   chat turns; <|im_end|> ends an assistant answer and is supervised in SFT
  <|unk|>            char mode only: characters not seen in training map to it (decoded as nothing)

The saved folder is a plain `PreTrainedTokenizerFast` (tokenizer.json + tokenizer_config.json + chat template):
`AutoTokenizer.from_pretrained(folder)` loads it without tinyllm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import time
import unicodedata

from tinyllm.config import DataArguments, TokenizerArguments
from tinyllm.data.corpora import cache_root
from tinyllm.data.documents import CorpusStream
from tinyllm.errors import ConfigError, DataError
from tinyllm.formatting import fmt_bytes
from tinyllm.model_io import load_tokenizer

__all__ = ["BOS", "EOS", "PAD", "UNK", "IM_START", "IM_END", "CHAT_TEMPLATE", "SPLIT_PATTERN",
           "train_tokenizer", "wrap_tokenizer", "check_unknown_rate", "unknown_rate_warning", "is_cjk",
           "count_alphabet", "language_of",
           "tokenizer_report", "build_tokenizer", "trained_tokenizer", "tokenizer_for_run",
           "check_pretraining_tokenizer"]

logger = logging.getLogger(__name__)

BOS, EOS, PAD, UNK = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|unk|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIALS = [BOS, EOS, PAD, IM_START, IM_END]
HELDOUT_REPORT_CHARS = 4 << 20  # held-out text the tokenizer report measures compression on

# ChatML with {% generation %} markers: return_assistant_tokens_mask=True then marks exactly the answer
# and its <|im_end|> (the "\n" after it is formatting, not supervised).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] }}{{ '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# BPE tokenizers encode with Llama 3's pre-tokenizer (GPT-4 / cl100k style): contractions, letter runs, numbers of
# up to 3 digits, punctuation, newlines, and spaces kept exact. llama.cpp implements exactly this split
# (tokenizer.ggml.pre = "llama-bpe"), so exported GGUF files tokenize as transformers does. It keeps Chinese runs
# whole; no llama.cpp pre-tokenizer cuts them.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_NAME = "llama3"  # what the tokenizer report says; GGUF calls it "llama-bpe"
# The merges are *learned* on the same split except that Chinese runs are cut into pieces of at most 2 characters,
# so the vocabulary holds Chinese words of 1-2 characters rather than whole phrases. Encoding then keeps runs whole
# (as above) and applies those merges: a valid BPE tokenizer that llama.cpp reproduces exactly. On the built-in
# corpus at vocab 2048, learning on whole runs made whole facts single tokens ("熊喜欢吃浆果"), and the quickstart
# model's Chinese cloze accuracy fell from 0.80 to 0.22; measured in benchmarks/RESULTS.md.
LEARN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?(?:\p{Han}{1,2}|[^\p{Han}\P{L}]+)|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tinyllm's tokenizers before 2026-11-30 also *encoded* with LEARN_SPLIT_PATTERN: they still load and train, but
# cannot be exported to GGUF faithfully (no llama.cpp pre-tokenizer cuts Chinese runs).
LEGACY_SPLIT_PATTERN = LEARN_SPLIT_PATTERN


def is_cjk(ch: str) -> bool:
    return "CJK" in unicodedata.name(ch, "") or "\u3000" <= ch <= "\u303f" or "\uff00" <= ch <= "\uffef"


def count_alphabet(docs) -> set[str]:
    chars: set[str] = set()
    for d in docs:
        chars.update(d)
    return chars


def _batches(docs, size: int = 1000):
    batch = []
    for d in docs:
        batch.append(d)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def train_tokenizer(docs: list[str], tokenizer_type: str = "bpe", vocab_size: int = 8000, min_frequency: int = 2,
                    show_progress: bool = True, learn_pattern: str = LEARN_SPLIT_PATTERN,
                    encode_pattern: str = SPLIT_PATTERN, alphabet: set[str] | None = None):
    """Train and return a `transformers.PreTrainedTokenizerFast`. BPE merges are learned with `learn_pattern`
    and the tokenizer encodes with `encode_pattern` (both parameters exist for benchmarks comparing the choice).
    A char vocabulary is `alphabet` when given (every character of the corpus), else the characters of `docs`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    if not docs:
        raise DataError("the corpus is empty: no non-blank documents to train the tokenizer on; check the data")
    if tokenizer_type == "char":
        alphabet = sorted(alphabet if alphabet is not None else count_alphabet(docs))
        specials = [*SPECIALS, UNK]
        vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
    else:
        minimum = 256 + len(SPECIALS)
        if vocab_size < minimum:
            raise ConfigError(f"vocab_size {vocab_size} is smaller than the 256 byte symbols plus {len(SPECIALS)} "
                              f"special tokens; use --vocab_size {minimum} or more (e.g. 8000)")
        # ignore_merges: a whole pre-token that is itself a vocabulary entry is used as is (llama.cpp's llama-bpe
        # tokenizer does the same, so both agree token for token)
        tok = Tokenizer(models.BPE(ignore_merges=True))
        def split(pattern):
            return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

        tok.pre_tokenizer = split(learn_pattern)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
        )
        # Batches let `tokenizers` pre-tokenize in parallel on all cores.
        tok.train_from_iterator(_batches(docs), trainer=trainer, length=(len(docs) + 999) // 1000)
        tok.pre_tokenizer = split(encode_pattern)
    tok.add_special_tokens(SPECIALS + ([UNK] if tokenizer_type == "char" else []))
    return wrap_tokenizer(tok, tokenizer_type)


def wrap_tokenizer(tok, tokenizer_type: str):
    """A PreTrainedTokenizerFast with bos prepended, special tokens named and the chat template attached."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    kwargs = dict(unk_token=UNK) if tokenizer_type == "char" else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        extra_special_tokens=[IM_START, IM_END], chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,  # the default "cleanup" would turn " ." into "." and break round trips
        model_max_length=1_000_000, **kwargs,
    )


def unknown_rate_warning(unknown: int, total: int, where: str, limit: float = 0.01) -> float:
    """Share of tokens that are <|unk|> (char tokenizers map unseen characters to it), from counts taken while
    streaming; warn above `limit` (1%), e.g. a poetry-trained char tokenizer used on modern Chinese."""
    rate = unknown / max(total, 1)
    if rate > limit:
        logger.warning("%.1f%% of the tokens of %s are %s: characters the char tokenizer never saw (they are lost). "
                       "Train the tokenizer on this text too, or use --tokenizer_type bpe", 100 * rate, where, UNK)
    return rate


def check_unknown_rate(tokenizer, id_lists, where: str, limit: float = 0.01) -> float:
    """unknown_rate_warning over token id lists (SFT examples). Returns the rate (0.0 for BPE, which has none)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return 0.0
    total = hits = 0
    for ids in id_lists:
        total += len(ids)
        hits += sum(1 for t in ids if t == unk)
    return unknown_rate_warning(hits, total, where, limit)


def language_of(text: str) -> str:
    """'zh' when most letters are CJK, else 'en' (good enough to split a report by language)."""
    letters = [c for c in text[:2000] if c.isalpha()]
    if not letters:
        return "other"
    cjk = sum(1 for c in letters if is_cjk(c))
    return "zh" if cjk > len(letters) / 2 else "en"


def tokenizer_report(tokenizer, heldout: list[str], train_seconds: float, tokenizer_type: str,
                     dataset_name: str) -> dict:
    """Compression on held-out text: characters and UTF-8 bytes per token, overall and per language."""
    groups: dict[str, list[str]] = {}
    for doc in heldout:
        groups.setdefault(language_of(doc), []).append(doc)

    def stats(docs: list[str]) -> dict:
        ntok = sum(len(ids) for ids in tokenizer(docs, add_special_tokens=False, verbose=False)["input_ids"])
        nchar = sum(len(d) for d in docs)
        nbyte = sum(len(d.encode("utf-8")) for d in docs)
        return {"documents": len(docs), "tokens": ntok, "characters": nchar, "bytes": nbyte,
                "chars_per_token": round(nchar / max(ntok, 1), 3), "bytes_per_token": round(nbyte / max(ntok, 1), 3)}

    pre = ("one token per character" if tokenizer_type == "char" else
           f"{PRE_TOKENIZER_NAME}: Llama 3's split (GPT-4 style), chosen because llama.cpp implements it exactly "
           f"(GGUF tokenizer.ggml.pre = llama-bpe), so exported models tokenize as they do here; merges were "
           f"learned on Chinese pieces of at most 2 characters, so the vocabulary holds words, not phrases")
    report = {"tokenizer_type": tokenizer_type, "pre_tokenizer": pre, "vocab_size": len(tokenizer),
              "dataset_name": dataset_name,
              "train_seconds": round(train_seconds, 2), "heldout": stats(heldout) if heldout else None,
              "per_language": {k: stats(v) for k, v in sorted(groups.items())} if len(groups) > 1 else {}}
    return report


def build_tokenizer(data: DataArguments, tok_args: TokenizerArguments, seed: int = 0,
                    stream: CorpusStream | None = None):
    """Train a tokenizer on the corpus; return (tokenizer, report). Streamed: BPE merges are learned on a sample
    of the training documents of at most `tokenizer_sample_bytes` (documents kept at random, by seed, when the
    corpus is bigger), so memory and time stay bounded however big the corpus; a char vocabulary covers every
    character of the corpus (as nanoGPT's shakespeare_char builds it from the whole file). The report measures
    compression on up to 4 MB of the held-out documents. `stream`: the corpus already resolved (not again)."""
    stream = stream or CorpusStream(data, seed)
    budget = tok_args.tokenizer_sample_bytes or float("inf")
    keep = 1.0 if not stream.total_bytes or stream.total_bytes <= budget else budget / stream.total_bytes
    rng = random.Random(seed)
    sample: list[str] = []
    heldout: list[str] = []
    taken = held = kept_docs = 0
    alphabet: set[str] = set()
    char = tok_args.tokenizer_type == "char"
    for text, is_validation in stream:
        if char:
            alphabet.update(text)
        if is_validation:
            if held < HELDOUT_REPORT_CHARS:
                heldout.append(text)
                held += len(text)
            continue
        if taken >= budget or (tok_args.tokenizer_max_documents and kept_docs >= tok_args.tokenizer_max_documents):
            continue
        if keep >= 1 or rng.random() < keep:
            sample.append(text)
            taken += len(text.encode("utf-8"))
            kept_docs += 1
    if not sample:
        raise DataError(f"corpus '{data.dataset_name}' has no training documents for the tokenizer; check the data "
                        f"or lower --validation_split_percentage")
    start = time.perf_counter()
    tokenizer = train_tokenizer(sample, tok_args.tokenizer_type, tok_args.vocab_size, tok_args.min_frequency,
                                alphabet=alphabet if char else None)
    seconds = time.perf_counter() - start
    report = tokenizer_report(tokenizer, heldout, seconds, tok_args.tokenizer_type, data.dataset_name)
    report["sample_bytes"] = taken
    logger.info("trained a %s tokenizer with %d tokens on %s of text in %.1f s", tok_args.tokenizer_type,
                len(tokenizer), fmt_bytes(taken), seconds)
    return tokenizer, report


def trained_tokenizer(data: DataArguments, tok_args: TokenizerArguments, seed: int = 0):
    """build_tokenizer's result, kept in CACHE/tokenizers/<key> (key: the corpus's fingerprint, the tokenizer
    options and the seed): `tinyllm prepare` and `tinyllm pretrain` on the same corpus train it once."""
    from transformers import AutoTokenizer

    stream = CorpusStream(data, seed)
    spec = {"corpus": stream.fingerprint(), "options": dataclasses.asdict(tok_args), "seed": seed, "format": 1}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = cache_root(data.cache_dir) / "tokenizers" / key
    if (folder / "tokenizer_report.json").is_file():
        logger.info("tokenizer trained earlier on this corpus with these options: %s", folder)
        report = json.loads((folder / "tokenizer_report.json").read_text(encoding="utf-8"))
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False), report
    tokenizer, report = build_tokenizer(data, tok_args, seed, stream)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    tokenizer.save_pretrained(tmp)
    (tmp / "tokenizer_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    try:
        os.replace(tmp, folder)
    except OSError:  # another process saved it first
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer, report


def tokenizer_for_run(tokenizer_name_or_path: str | None, model_name_or_path: str | None, data: DataArguments,
                      tok_args: TokenizerArguments, seed: int = 0):
    """(tokenizer, report or None) for a pretraining run: the one named, else the model's own (continued
    pretraining), else one trained on the corpus (once: trained_tokenizer keeps it in the cache)."""
    if tokenizer_name_or_path:
        return load_tokenizer(tokenizer_name_or_path), None
    if model_name_or_path:
        return load_tokenizer(model_name_or_path), None
    logger.info("no tokenizer_name_or_path: a %s tokenizer (vocab %d) trained on %s (once; kept in the cache)",
                tok_args.tokenizer_type, tok_args.vocab_size, data.dataset_name)
    return trained_tokenizer(data, tok_args, seed)


def check_pretraining_tokenizer(tokenizer, from_scratch: bool) -> None:
    """What packing needs: an eos between documents; from scratch also bos and a pad that is not eos."""
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos token, so documents cannot be separated when packing; set "
                          "eos_token in its tokenizer_config.json or train one with tinyllm")
    if not from_scratch:
        return  # a model someone else trained keeps its own tokenizer (GPT-2 has no pad token and bos == eos)
    if not tokenizer.bos_token or not tokenizer.pad_token:
        raise ConfigError("the tokenizer needs bos, eos and pad tokens; train it with tinyllm")
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ConfigError("the tokenizer's pad token equals its eos token, so padding masks would hide the end of "
                          "texts; train the tokenizer with tinyllm (it reserves a separate <|pad|>)")

