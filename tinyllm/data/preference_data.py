"""Preference pairs for DPO: TRL's formats -> chat messages -> token ids through tinyllm's chat encoding.

Accepted records (TRL's preference formats, one per row):
  explicit prompt, text      {"prompt": "question", "chosen": "good answer", "rejected": "bad answer"}
  explicit prompt, messages  {"prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}],
                              "rejected": [{"role": "assistant", ...}]}
  implicit prompt            {"chosen": [conversation], "rejected": [conversation]} sharing every turn but the last

A text prompt is the user's message and a text answer the assistant's (DPO here tunes chat models). Each pair is
tokenized the way SFT examples are (tinyllm.inference.chat): the prompt through the chat template with a generation
prompt, each answer as the assistant turn up to and including its end-of-turn token, user text never turned into
control tokens. TRL's DPOTrainer then gets prompt_ids / chosen_ids / rejected_ids and masks the prompt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass

from tinyllm.config import DataArguments
from tinyllm.data.builtin import ANIMALS, fact_sentences, generate_qa
from tinyllm.data.sft_data import held_out_split, rows_dataset, tokenizer_digest
from tinyllm.errors import DataError
from tinyllm.inference.chat import encode_chat, encode_for_training
from tinyllm.post_training_config import PreferenceArguments

__all__ = ["FORMATS", "generate_preferences", "record_to_pair", "encode_pair", "build_preference_datasets",
           "PreferenceData"]

logger = logging.getLogger(__name__)
FORMATS = ("prompt/chosen/rejected as strings or as message lists, or chosen/rejected as whole conversations "
           "sharing their prompt (TRL's preference formats)")
BUILTIN_NAMES = ("builtin", "builtin_qa", "builtin_preferences")
# Phrasings SFT never saw, for the training pairs: on memorized questions the SFT model is already right, so pairs on
# new wordings are where it hesitates between the asked animal and a frequent answer (its held-out mistake)
NEW_PHRASINGS = {
    "en": {"food": ["What is the favorite food of a {a}?", "Tell me what a {a} eats."],
           "home": ["Where can you find a {a} at home?", "Tell me where a {a} lives."],
           "sound": ["What noise does a {a} make?", "Tell me what a {a} says."]},
    "zh": {"food": ["{a}最爱吃什么？", "{a}平时吃什么？"],
           "home": ["{a}住在什么地方？", "{a}平时住在哪儿？"],
           "sound": ["{a}是怎么叫的？", "{a}的叫声是什么？"]},
}


def generate_preferences(split: str = "train", seed: int = 0, languages: str = "en,zh") -> list[dict]:
    """Preference pairs about the built-in world, from the built-in QA split of the same name (held-out questions
    stay held out). Chosen: the right answer. Rejected, one pair each: another animal's fact of the same kind
    (the classic SFT mistake, "熊喜欢吃什么？" -> "猫喜欢吃鱼。"), the right animal with another's fact, the answer
    in the other language, and the right answer that does not stop (it runs on into another fact, no end of turn).
    `seed` only picks rejected answers: the held-out questions are builtin_qa's own split, so DPO never trains on
    a question SFT held out, whatever the run's seed."""
    rng = random.Random(seed + 7)
    qa = generate_qa(languages=languages)
    rows = [r for r in qa["train" if split == "train" else "test"] if "question" in r]
    if split == "train":
        seen = set()
        for r in list(rows):
            if (r["animal"], r["kind"], r["language"]) not in seen:
                seen.add((r["animal"], r["kind"], r["language"]))
                name = r["animal"] if r["language"] == "en" else ANIMALS[r["animal"]][1][0]
                rows += [{**r, "question": q.format(a=name)} for q in NEW_PHRASINGS[r["language"]][r["kind"]]]
    # a rejected answer is never the held-out answer to another question: DPO must not push down what the
    # held-out questions ask for (those facts come from pretraining, and the evaluation measures them)
    held_out = {(r["animal"], r["kind"]) for r in qa["test"]}
    kinds = ("food", "home", "sound")
    out = []
    for r in rows:
        lang, animal, k = r["language"], r["animal"], kinds.index(r["kind"])
        others = [a for a in ANIMALS if a != animal and (a, r["kind"]) not in held_out]
        other = rng.choice(others)
        other_fact = fact_sentences(other, lang)[k]
        wrong_value = _swap_value(fact_sentences(animal, lang)[k], animal, other, lang, k)
        other_lang = "zh" if lang == "en" else "en"
        nxt = rng.choice([(a, j) for a in ANIMALS for j in range(3) if (a, kinds[j]) not in held_out])
        rejected = [other_fact, wrong_value, fact_sentences(animal, other_lang)[k],
                    r["answer"] + (" " if lang == "en" else "") + fact_sentences(nxt[0], lang)[nxt[1]]]
        stops = [True, True, True, False]
        if other_lang not in languages:
            rejected, stops = rejected[:2] + rejected[3:], stops[:2] + stops[3:]
        for rej, stop in zip(rejected, stops):
            out.append({"prompt": r["question"], "chosen": r["answer"], "rejected": rej, "rejected_stops": stop,
                        "language": lang})
    return out


def _swap_value(sentence: str, animal: str, other: str, lang: str, k: int) -> str:
    """`animal`'s fact sentence with `other`'s value in it ("A bear likes to eat fish.")."""
    mine = ANIMALS[animal][0][[1, 2, 0][k]] if lang == "en" else ANIMALS[animal][1][[2, 3, 1][k]]
    theirs = ANIMALS[other][0][[1, 2, 0][k]] if lang == "en" else ANIMALS[other][1][[2, 3, 1][k]]
    return sentence.replace(mine, theirs)


def _messages(value, where: str, side: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user" if side == "prompt" else "assistant", "content": value}]
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [{"role": str(m["role"]), "content": str(m["content"] or "")} for m in value]
    raise DataError(f"{where}: '{side}' must be a string or a list of {{role, content}} messages, got "
                    f"{type(value).__name__}")


def record_to_pair(row: dict, where: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt messages, chosen messages, rejected messages) of one record; one-line errors name the record."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object; accepted formats: {FORMATS}")
    if "chosen" not in row or "rejected" not in row:
        raise DataError(f"{where}: a preference pair needs 'chosen' and 'rejected' columns (and 'prompt' unless "
                        f"they are whole conversations); found columns: {', '.join(sorted(row)) or 'none'}")
    chosen, rejected = _messages(row["chosen"], where, "chosen"), _messages(row["rejected"], where, "rejected")
    if "prompt" in row and row["prompt"] is not None:
        prompt = _messages(row["prompt"], where, "prompt")
    else:  # implicit prompt: the shared turns before the answers
        if isinstance(row["chosen"], str):
            raise DataError(f"{where}: text answers need a 'prompt' column; found columns: "
                            f"{', '.join(sorted(row))}")
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    for side, msgs in (("chosen", chosen), ("rejected", rejected)):
        if not msgs or not any(m["content"].strip() for m in msgs):
            raise DataError(f"{where}: the {side} answer is empty; fill it in or remove the record")
        if msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}: the {side} side must end with an assistant message, got "
                            f"'{msgs[-1]['role']}'")
    if not prompt or prompt[-1]["role"] != "user":
        raise DataError(f"{where}: the prompt must end with a user message (got "
                        f"{prompt[-1]['role'] if prompt else 'no prompt'})")
    if chosen == rejected:
        raise DataError(f"{where}: chosen and rejected are the same answer, so the pair teaches nothing; fix or "
                        f"remove the record")
    return prompt, chosen, rejected


def _answer_ids(tokenizer, prompt: list[dict], answer: list[dict], prompt_ids: list[int], stops: bool) -> list[int]:
    """The answer's tokens after the prompt: content plus the template's end-of-turn token (training labels of
    SFT); without it when `stops` is False (an answer that never ends its turn)."""
    ids, labels = encode_for_training(tokenizer, prompt + answer)
    if ids[:len(prompt_ids)] != prompt_ids:
        # every template tinyllm has met renders the prompt as a prefix; say so plainly if one does not
        raise DataError("the chat template renders a prompt differently when an answer follows it, so prompt and "
                        "answer tokens cannot be separated; use a template whose generation prompt is a prefix")
    answer_ids = [t for t, lab in zip(ids[len(prompt_ids):], labels[len(prompt_ids):]) if lab != -100]
    if not stops:
        eot = set(_stop_ids(tokenizer))
        while answer_ids and answer_ids[-1] in eot:
            answer_ids = answer_ids[:-1]
    return answer_ids


def _stop_ids(tokenizer) -> list[int]:
    return [i for i in (tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens) if i is not None]


def encode_pair(tokenizer, prompt: list[dict], chosen: list[dict], rejected: list[dict],
                rejected_stops: bool = True) -> dict:
    """prompt_ids, chosen_ids and rejected_ids as TRL's DPOTrainer takes them, through tinyllm's chat encoding."""
    prompt_ids = encode_chat(tokenizer, prompt, add_generation_prompt=True)
    return {"prompt_ids": prompt_ids, "chosen_ids": _answer_ids(tokenizer, prompt, chosen, prompt_ids, True),
            "rejected_ids": _answer_ids(tokenizer, prompt, rejected, prompt_ids, rejected_stops)}


@dataclass
class PreferenceData:
    train: object  # datasets.Dataset of prompt_ids / chosen_ids / rejected_ids
    eval: object | None
    questions: list[list[dict]]  # held-out conversations (prompt + chosen answer) for exact match
    stats: dict


def _rows(data: DataArguments, split: str, seed: int):
    """One split's records as an Arrow-backed dataset of (where, row as JSON): the built-in pairs generated, a
    file or Hub dataset read record by record (sft_data.rows_dataset: memory-mapped, cached)."""
    import datasets

    if data.dataset_name in BUILTIN_NAMES:
        return datasets.Dataset.from_list([{"where": f"builtin[{split}][{i}]", "row": json.dumps(r, ensure_ascii=False)}
                                           for i, r in enumerate(generate_preferences(split, seed))])
    return rows_dataset(data, split)


def _pair_encoder(tokenizer, max_length: int | None, keep_messages: bool):
    def encode(batch):
        out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "messages": [], "too_long": []}
        for where, raw in zip(batch["where"], batch["row"]):
            row = json.loads(raw)
            prompt, chosen, rejected = record_to_pair(row, where)
            enc = encode_pair(tokenizer, prompt, chosen, rejected, bool(row.get("rejected_stops", True)))
            for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
                out[key].append(enc[key])
            out["messages"].append(json.dumps(prompt + chosen, ensure_ascii=False) if keep_messages else "")
            out["too_long"].append(bool(max_length) and len(enc["prompt_ids"]) + max(
                len(enc["chosen_ids"]), len(enc["rejected_ids"])) > max_length)
        return out

    return encode


def _encode(rows, tokenizer, max_length: int | None, keep_messages: bool):
    """Pairs -> token ids through datasets.map: Arrow-backed and cached under a fingerprint of the records, the
    tokenizer and max_length (a second run loads the cache)."""
    fingerprint = hashlib.sha256(json.dumps([rows._fingerprint, tokenizer_digest(tokenizer), max_length,
                                             keep_messages, "dpo", 1]).encode()).hexdigest()[:16]
    return rows.map(_pair_encoder(tokenizer, max_length, keep_messages), batched=True, batch_size=256,
                    remove_columns=rows.column_names, new_fingerprint=fingerprint, desc="tokenizing preference pairs")


def build_preference_datasets(data: DataArguments, pref: PreferenceArguments, tokenizer, max_length: int | None,
                              seed: int = 0) -> PreferenceData:
    """Training and held-out pairs (held out: the built-in held-out questions, the split named, else a seeded
    share of the records, the rule GRPO uses too), tokenized with datasets.map: memory stays flat on a big file
    and a second run does not tokenize again. Pairs longer than max_length are counted and dropped with a
    warning."""
    train_rows, val_rows = held_out_split(data, lambda split: _rows(data, split, seed),
                                          data.dataset_name in BUILTIN_NAMES, seed, take=lambda ds, i: ds.select(i))
    if len(train_rows) == 0:
        raise DataError(f"{data.dataset_name} has no records; accepted formats: {FORMATS}")
    if pref.max_examples:
        train_rows = train_rows.select(range(min(pref.max_examples, len(train_rows))))
    train = _encode(train_rows, tokenizer, max_length, False)
    val = _encode(val_rows, tokenizer, max_length, True) if len(val_rows) else None
    dropped_train = sum(train["too_long"])
    dropped_val = sum(val["too_long"]) if val is not None else 0
    if dropped_train:
        logger.warning("%d of %d training pairs are longer than max_length=%d tokens and were dropped",
                       dropped_train, len(train), max_length)
    if dropped_train == len(train):
        raise DataError(f"no usable training pairs in {data.dataset_name}: all {len(train)} are longer "
                        f"than max_length={max_length} tokens; raise --max_length")

    def usable(ds):
        return ds.filter(lambda long: [not x for x in long], input_columns="too_long", batched=True)

    train = usable(train)
    val = usable(val) if val is not None and dropped_val < len(val) else None
    # each held-out question once, however many rejected answers it has
    questions = [json.loads(m) for m in dict.fromkeys(val["messages"])] if val is not None else []
    cols = ["prompt_ids", "chosen_ids", "rejected_ids"]
    train_ds, val_ds = train.select_columns(cols), val.select_columns(cols) if val is not None else None
    stats = {"train_pairs": len(train_ds), "eval_pairs": len(val_ds) if val_ds is not None else 0,
             "dropped_too_long": dropped_train + dropped_val}
    return PreferenceData(train_ds, val_ds, questions, stats)
