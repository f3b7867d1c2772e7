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

import logging
import time
import unicodedata

from tinyllm.config import DataArguments, TokenizerArguments
from tinyllm.data.corpora import iter_documents, split_documents
from tinyllm.errors import ConfigError, DataError

__all__ = ["BOS", "EOS", "PAD", "UNK", "IM_START", "IM_END", "CHAT_TEMPLATE", "SPLIT_PATTERN",
           "train_tokenizer", "wrap_tokenizer", "check_unknown_rate", "is_cjk", "count_alphabet", "language_of",
           "load_corpus_documents", "tokenizer_report", "build_tokenizer"]

logger = logging.getLogger(__name__)

BOS, EOS, PAD, UNK = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|unk|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIALS = [BOS, EOS, PAD, IM_START, IM_END]

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
                    encode_pattern: str = SPLIT_PATTERN):
    """Train and return a `transformers.PreTrainedTokenizerFast`. BPE merges are learned with `learn_pattern`
    and the tokenizer encodes with `encode_pattern` (both parameters exist for benchmarks comparing the choice)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers


    if not docs:
        raise DataError("the corpus is empty: no non-blank documents to train the tokenizer on; check the data")
    if tokenizer_type == "char":
        alphabet = sorted(count_alphabet(docs))
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


def check_unknown_rate(tokenizer, id_lists, where: str, limit: float = 0.01) -> float:
    """Share of tokens that are <|unk|> (char tokenizers map unseen characters to it); warn above `limit` (1%),
    e.g. a poetry-trained char tokenizer used on modern Chinese. Returns the rate (0.0 for BPE, which has none)."""
    unk = tokenizer.unk_token_id
    if unk is None:
        return 0.0
    total = hits = 0
    for ids in id_lists:
        total += len(ids)
        hits += sum(1 for t in ids if t == unk)
    rate = hits / max(total, 1)
    if rate > limit:
        logger.warning("%.1f%% of the tokens of %s are %s: characters the char tokenizer never saw (they are lost). "
                       "Train the tokenizer on this text too, or use --tokenizer_type bpe", 100 * rate, where, UNK)
    return rate


# ---------------------------------------------------------------- training on a corpus

def load_corpus_documents(data: DataArguments, seed: int = 0, limit: int | None = None) -> list[str]:
    """All documents of the configured corpus, in order (at most `limit` / `max_documents`)."""
    docs = []
    limit = limit or data.max_documents
    for doc in iter_documents(data.dataset_name, data.dataset_config_name, data.dataset_split, data.text_column,
                              data.cache_dir, data.builtin_num_documents, data.builtin_languages, seed):
        docs.append(doc)
        if limit and len(docs) >= limit:
            break
    if not docs:
        raise DataError(f"corpus '{data.dataset_name}' is empty: no non-blank documents found; check the data")
    return docs


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


def build_tokenizer(data: DataArguments, tok_args: TokenizerArguments, seed: int = 0, docs: list[str] | None = None):
    """Train a tokenizer on the corpus; return (tokenizer, report). Holds out the validation slice."""
    if docs is None:
        docs = load_corpus_documents(data, seed, limit=tok_args.tokenizer_max_documents or data.max_documents)
    pct = data.validation_split_percentage
    train_docs, heldout = split_documents(docs, 5.0 if pct is None else pct)  # an explicit 0 holds nothing out
    if tok_args.tokenizer_max_documents:
        train_docs = train_docs[: tok_args.tokenizer_max_documents]
    if tok_args.tokenizer_type == "char":
        # Char mode's vocabulary must cover the held-out text too, as nanoGPT's shakespeare_char builds it
        # from the whole file; BPE never needs this since it falls back to bytes.
        train_docs = train_docs + heldout
    start = time.perf_counter()
    tokenizer = train_tokenizer(train_docs, tok_args.tokenizer_type, tok_args.vocab_size, tok_args.min_frequency)
    seconds = time.perf_counter() - start
    report = tokenizer_report(tokenizer, heldout, seconds, tok_args.tokenizer_type, data.dataset_name)
    logger.info("trained a %s tokenizer with %d tokens in %.1f s", tok_args.tokenizer_type, len(tokenizer), seconds)
    return tokenizer, report
