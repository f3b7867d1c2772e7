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
import unicodedata

__all__ = ["BOS", "EOS", "PAD", "UNK", "IM_START", "IM_END", "CHAT_TEMPLATE", "SPLIT_PATTERN",
           "train_tokenizer", "wrap_tokenizer", "check_chat_tokens", "check_unknown_rate", "is_cjk", "count_alphabet"]

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

    from tinyllm.errors import ConfigError, DataError

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


def check_chat_tokens(tokenizer, where: str) -> None:
    """SFT needs the chat tokens and template that tinyllm reserves; say how to get them if missing."""
    from tinyllm.errors import ConfigError

    vocab = tokenizer.get_vocab()
    missing = [t for t in (IM_START, IM_END) if t not in vocab]
    if missing:
        raise ConfigError(f"the tokenizer in {where} has no chat tokens ({', '.join(missing)}); pretrain with a "
                          f"tokenizer trained by tinyllm (tokenizer_training/train_tokenizer.py), which reserves them")
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"the tokenizer in {where} has no chat template; retrain it with tinyllm or add one")


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
