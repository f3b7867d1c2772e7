"""The built-in corpus: exact probabilities, entropy floor, and the facts the QA set relies on."""

import math
import random

from tinyllm.data.builtin import ANIMALS, _Sampler, _story_en, corpus_entropy, generate_corpus, generate_qa


def test_log_probability_matches_choices():
    """Replaying the generator with a recording RNG: log2 p(doc) is the sum of log2(1/len(options))."""
    rng = random.Random(5)
    s = _Sampler(rng)
    calls = []
    orig = s.pick

    def pick(options):
        options = list(options)
        calls.append(len(options))
        return orig(options)

    s.pick = pick
    _story_en(s)
    assert math.isclose(s.log2p, -sum(math.log2(n) for n in calls))


def test_text_determines_derivation():
    """Distinct derivations give distinct texts, so p(text) = p(derivation) and the floor is exact."""
    docs = generate_corpus(3000, seed=1)
    by_text = {}
    for d in docs:
        by_text.setdefault(d.text, set()).add(round(d.log2_prob, 9))
    assert all(len(v) == 1 for v in by_text.values())


def test_entropy_floor_reported_per_language():
    ent = corpus_entropy(generate_corpus(2000, seed=0))
    assert 0.05 < ent["bits_per_char"] < 1.0
    assert ent["bits_per_char_zh"] > ent["bits_per_char_en"]  # a Chinese character carries more information
    assert ent["bits_per_byte"] < ent["bits_per_char"]


def test_stories_state_the_facts_the_qa_set_asks():
    docs = generate_corpus(500, seed=0)
    for animal, ((sound, food, home), _) in ANIMALS.items():
        stories = [d.text for d in docs if f" {animal} named" in d.text.split(".")[0]]
        assert stories and all(f"liked to eat {food}" in t and f"lived in the {home}" in t for t in stories)
    qa = generate_qa()
    train_pairs = {(x["animal"], x["kind"]) for x in qa["train"]}
    test_pairs = {(x["animal"], x["kind"]) for x in qa["test"]}
    assert train_pairs and test_pairs and not train_pairs & test_pairs
    # every held-out answer is a sentence the pretraining corpus states verbatim in its fact documents
    corpus = " ".join(d.text for d in generate_corpus(3000, seed=0))
    assert all(x["answer"] in corpus for x in qa["test"])
