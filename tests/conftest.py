"""Hermetic test setup: no network, no Hub, caches in a temporary folder, tiny models built in-process."""

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TQDM_DISABLE"] = "1"

_SESSION_TMP = Path(os.environ.get("TINYLLM_TEST_TMP", "/tmp")) / f"tinyllm-tests-{os.getpid()}"
os.environ["TINYLLM_CACHE"] = str(_SESSION_TMP / "cache")
os.environ["HF_HOME"] = str(_SESSION_TMP / "hf_home")
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_TMP / "hf_datasets")
os.environ.pop("TINYLLM_CORPUS_MIRROR", None)
os.environ.pop("HF_TOKEN", None)

sys.path.insert(0, str(Path(__file__).parent))  # tests import their helpers as `helpers`


@pytest.fixture(scope="session")
def builtin_docs():
    from tinyllm.data.builtin import generate_corpus

    return [d.text for d in generate_corpus(1500, seed=0)]


@pytest.fixture(scope="session")
def bpe_tokenizer(builtin_docs):
    from tinyllm.data.tokenizer import train_tokenizer

    return train_tokenizer(builtin_docs, "bpe", vocab_size=600, show_progress=False)


@pytest.fixture(scope="session")
def tokenizer_dir(bpe_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    bpe_tokenizer.save_pretrained(path)
    return path
