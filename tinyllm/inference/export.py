"""`tinyllm export --format gguf`: a model folder -> one GGUF file for llama.cpp, Ollama and LM Studio, plus an
Ollama Modelfile.

    tinyllm export --model outputs/sft_quickstart --format gguf                  # f16, next to the model
    tinyllm export --model outputs/quickstart --format gguf --outtype q8_0 --output /tmp/quickstart.gguf

Written with `gguf` (gguf-py, the library llama.cpp itself uses), not with llama.cpp's converter script, whose
pre-tokenizer check refuses every freshly trained vocabulary. What is exported, and why it matches:

- Llama (`LlamaForCausalLM`, grouped-query attention, tied or untied embeddings) as arch `llama`; GPT-2
  (`GPT2LMHeadModel`) as arch `gpt2`. Merged SFT folders are plain Llama/GPT-2 folders and export the same way.
- Query/key rows of each Llama head are reordered from transformers' rotary layout (the first half of a head's
  dimensions paired with the second half) to llama.cpp's (neighbouring dimensions paired).
- The tokenizer as `tokenizer.ggml.model = gpt2` (byte-level BPE): tokens, merges, token types (special tokens as
  control tokens), bos/eos/pad ids, whether bos is added, and the chat template. `tokenizer.ggml.pre` names the
  llama.cpp pre-tokenizer that splits text exactly as ours: `llama-bpe` for tinyllm's tokenizers (Llama 3's
  split), `gpt2` for GPT-2's. Anything else is refused with the reason, never written approximately: tinyllm's
  older tokenizers (Chinese cut into pieces of at most two characters) and char-level tokenizers (they map an
  unseen character to <|unk|>, which a GGUF BPE vocabulary cannot express).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tinyllm.data.tokenizer import LEGACY_SPLIT_PATTERN, SPLIT_PATTERN
from tinyllm.errors import ConfigError, suggest
from tinyllm.inference.chat import token_ids
from tinyllm.io import atomic_file
from tinyllm.model_io import check_model_folder

__all__ = ["OUTTYPES", "gguf_pre_tokenizer", "export_gguf", "write_modelfile", "run_export"]

logger = logging.getLogger(__name__)
OUTTYPES = ("f32", "f16", "q8_0")
ARCHS = {"LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2"}
GPT2_BYTELEVEL = "gpt2 byte-level"


def gguf_pre_tokenizer(tokenizer_json: dict, where: str) -> str:
    """The llama.cpp pre-tokenizer (tokenizer.ggml.pre) that splits text exactly as this tokenizer does."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        kind = "char-level" if model.get("type") == "WordLevel" else f"a {model.get('type')} model"
        raise ConfigError(f"{where} has {kind} tokenizer: it maps characters it never saw to <|unk|>, which a GGUF "
                          f"BPE vocabulary cannot express, so llama.cpp would tokenize differently; train the model "
                          f"with a byte-level BPE tokenizer (--tokenizer_type bpe) to export it")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt2"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True) and \
            steps[0].get("behavior") == "Isolated" and not steps[0].get("invert"):
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern == SPLIT_PATTERN:
            if not model.get("ignore_merges"):
                raise ConfigError(f"{where}: its BPE model does not use whole-word vocabulary entries "
                                  f"(ignore_merges) as llama.cpp's llama-bpe does; retrain the tokenizer with this "
                                  f"version of tinyllm to export")
            return "llama-bpe"
        if pattern == LEGACY_SPLIT_PATTERN:
            raise ConfigError(f"{where} was trained by an older tinyllm whose pre-tokenizer cuts Chinese into pieces "
                              f"of at most 2 characters, which no llama.cpp pre-tokenizer does; retrain the tokenizer "
                              f"(and model) with this version to export it")
    raise ConfigError(f"{where}: its pre-tokenizer ({' + '.join(map(str, kinds))}) matches no llama.cpp "
                      f"pre-tokenizer exactly, so the GGUF file would tokenize differently; not exported")


def _token_types(tokenizer, n_rows: int) -> tuple[list[str], list[int]]:
    """GGUF token strings (byte-level form, as in tokenizer.json) and types for every embedding row."""
    from gguf import TokenType

    vocab = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_rows):
        if i in by_id:
            tokens.append(by_id[i])
            if i in added:
                types.append(int(TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED))
            else:
                types.append(int(TokenType.NORMAL))
        else:  # embedding rows past the tokenizer (padded to a multiple of 64): never produced
            tokens.append(f"[PAD{i}]")
            types.append(int(TokenType.UNUSED))
    return tokens, types


def _rotary_to_interleaved(w, n_heads: int):
    """Reorder the rows of a Llama q/k projection, head by head, from transformers' rotary layout (dimension j
    paired with j + d/2) to llama.cpp's (dimension 2j paired with 2j + 1)."""
    import numpy as np

    rows, cols = w.shape
    d = rows // n_heads
    order = np.arange(d).reshape(2, d // 2).T.reshape(-1)  # 0, d/2, 1, d/2+1, ...
    return w.reshape(n_heads, d, cols)[:, order, :].reshape(rows, cols)


def _tensors(sd: dict, cfg: dict, arch: str):
    """(GGUF name, array) for every weight, named by gguf-py's own table for the architecture (TensorNameMap, the
    one llama.cpp's converter uses), with the two layout changes llama.cpp needs: Llama's q/k rows reordered for
    its rotary layout, GPT-2's Conv1D weights (in, out) transposed to (out, in). A tied output head is not
    written (llama.cpp reuses the token embeddings)."""
    from gguf import MODEL_ARCH, get_tensor_name_map

    names = get_tensor_name_map(MODEL_ARCH.LLAMA if arch == "llama" else MODEL_ARCH.GPT2, cfg.get(
        "num_hidden_layers") or cfg["n_layer"])
    tied = cfg.get("tie_word_embeddings", True)
    n_head = cfg.get("num_attention_heads") or cfg.get("n_head")
    n_kv = cfg.get("num_key_value_heads") or n_head
    for key, w in sd.items():
        if key == "lm_head.weight" and tied:
            continue
        hf = "transformer." + key if arch == "gpt2" and not key.startswith(("transformer.", "lm_head")) else key
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError(f"tensor '{key}' has no GGUF name for {arch}; this checkpoint is not a plain "
                              f"{arch} model")
        if arch == "llama" and key.endswith(("self_attn.q_proj.weight", "self_attn.k_proj.weight")):
            w = _rotary_to_interleaved(w, n_head if "q_proj" in key else n_kv)
        elif arch == "gpt2" and w.ndim == 2 and key.endswith(("attn.c_attn.weight", "attn.c_proj.weight",
                                                             "mlp.c_fc.weight", "mlp.c_proj.weight")):
            w = w.T
        yield name, w


def _convert(name: str, w, outtype: str):
    """(array, raw dtype or None) in the requested type; norms, biases and position tables stay f32 (llama.cpp
    computes them in f32), and q8_0 falls back to f16 for rows that are not a multiple of its 32-value block."""
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim < 2 or outtype == "f32" or name == "position_embd.weight":
        return w, None
    if outtype == "q8_0" and w.shape[-1] % 32 == 0:
        return quantize(w, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return w.astype(np.float16), None


def _write_hparams(w, arch: str, cfg: dict, model_dir: str) -> None:
    """The architecture's hyperparameters, under the key names llama.cpp reads for it."""
    if arch == "llama":
        n_head = cfg["num_attention_heads"]
        rope = cfg.get("rope_parameters") or {}
        if cfg.get("rope_scaling") or rope.get("rope_type", "default") != "default":
            raise ConfigError(f"{model_dir} uses rope scaling, which this exporter does not write yet")
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(n_head)
        w.add_head_count_kv(cfg.get("num_key_value_heads") or n_head)
        w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // n_head)
        w.add_rope_freq_base(float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0))
        w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    else:
        w.add_context_length(cfg["n_positions"])
        w.add_embedding_length(cfg["n_embd"])
        w.add_block_count(cfg["n_layer"])
        w.add_feed_forward_length(cfg.get("n_inner") or 4 * cfg["n_embd"])
        w.add_head_count(cfg["n_head"])
        w.add_layer_norm_eps(float(cfg.get("layer_norm_epsilon", 1e-5)))


def _write_tokenizer(w, tokenizer, tokenizer_json: dict, pre: str, n_rows: int, gen: dict) -> int | None:
    """Tokens, merges, types, special ids and the chat template; returns the end-of-turn id of a chat model."""
    tokens, types = _token_types(tokenizer, n_rows)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"].get("merges", [])])
    for add, value in ((w.add_bos_token_id, tokenizer.bos_token_id), (w.add_eos_token_id, tokenizer.eos_token_id),
                       (w.add_pad_token_id, tokenizer.pad_token_id)):
        if value is not None:
            add(value)
    w.add_add_bos_token(tokenizer.bos_token_id is not None
                        and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id])
    w.add_add_eos_token(False)

    eot = next((i for i in token_ids(gen.get("eos_token_id")) if i != tokenizer.eos_token_id), None)
    if eot is not None:  # a chat model: its end-of-turn token ends generation in llama.cpp too
        w.add_eot_token_id(eot)
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)
    return eot


def export_gguf(model_dir: str, out_path: Path, outtype: str = "f16") -> dict:
    """Write the GGUF file to `out_path` (the caller makes it atomic). Returns what was written."""
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    cfg = check_model_folder(model_dir)
    arch_name = (cfg.get("architectures") or ["?"])[0]
    if arch_name not in ARCHS:
        raise ConfigError(f"{model_dir} is a {arch_name}; GGUF export supports {', '.join(ARCHS)}")
    tok_json_path = Path(model_dir) / "tokenizer.json"
    if not tok_json_path.is_file():
        raise ConfigError(f"{model_dir} has no tokenizer.json; export needs the model's fast tokenizer")
    tokenizer_json = json.loads(tok_json_path.read_text(encoding="utf-8"))
    pre = gguf_pre_tokenizer(tokenizer_json, str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    gen_path = Path(model_dir) / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    sd = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        sd.update(load_file(str(f)))
    arch = ARCHS[arch_name]
    tensors = list(_tensors(sd, cfg, arch))
    n_rows = dict(tensors)["token_embd.weight"].shape[0]

    w = gguf.GGUFWriter(str(out_path), arch)
    w.add_name(Path(model_dir).resolve().name)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    _write_hparams(w, arch, cfg, model_dir)
    w.add_vocab_size(n_rows)
    eot = _write_tokenizer(w, tokenizer, tokenizer_json, pre, n_rows, gen)
    for name, array in tensors:
        data, raw = _convert(name, array, outtype)
        w.add_tensor(name, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    chat = eot is not None and bool(getattr(tokenizer, "chat_template", None))
    return {"arch": arch, "pre": pre, "tensors": len(tensors), "vocab_rows": n_rows, "eot": eot, "generation": gen,
            "chat": chat, "chatml": chat and _renders_chatml(tokenizer),
            "context": cfg.get("max_position_embeddings") or cfg.get("n_positions")}


def _renders_chatml(tokenizer) -> bool:
    """Whether the model's chat template is ChatML (tinyllm's own, Qwen's, SmolLM's): rendered on a sample
    conversation, it gives ChatML's text, with or without a bos in front."""
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception:  # noqa: BLE001 (jinja raises many types; any failure means "not ChatML")
        return False
    chatml = "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"
    return text.removeprefix(tokenizer.bos_token or "") == chatml


def write_modelfile(gguf_path: Path, info: dict, tokenizer_specials: dict) -> str:
    """An Ollama Modelfile: FROM the GGUF, the context the model was trained for (num_ctx: Ollama's default is far
    longer, and a small model past its positions produces noise), the ChatML TEMPLATE for ChatML chat models, the
    plain prompt for base models, stop strings and the sampling defaults from generation_config.json. A chat model
    with another template gets no TEMPLATE line: Ollama takes the template from the GGUF's tokenizer.chat_template
    (a hand-written ChatML one would be wrong for it)."""
    gen = info["generation"]
    lines = [f"# Ollama Modelfile written by tinyllm export. ollama create NAME -f {gguf_path.stem}.Modelfile",
             f"FROM ./{gguf_path.name}", ""]
    if info["chat"] and not info.get("chatml"):
        lines += ["# TEMPLATE: this model's chat template is not ChatML; Ollama reads it from the GGUF "
                  "(tokenizer.chat_template)"]
    elif info["chat"]:
        lines += ['TEMPLATE """{{- if .System }}<|im_start|>system', "{{ .System }}<|im_end|>",
                  "{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}", "{{ .Content }}<|im_end|>",
                  '{{ end }}<|im_start|>assistant', '"""']
    else:
        lines += ['TEMPLATE """{{ .Prompt }}"""']
    if info.get("context"):
        lines.append(f"PARAMETER num_ctx {info['context']}")
    for stop in tokenizer_specials.get("stops", []):
        lines.append(f'PARAMETER stop "{stop}"')
    for key, ours in (("temperature", "temperature"), ("top_k", "top_k"), ("top_p", "top_p"),
                      ("repeat_penalty", "repetition_penalty"), ("num_predict", "max_new_tokens")):
        if gen.get(ours) is not None:
            lines.append(f"PARAMETER {key} {gen[ours]}")
    return "\n".join(lines) + "\n"


def run_export(args) -> Path:
    from transformers import AutoTokenizer

    if args.format != "gguf":
        raise ConfigError(f"unknown --format '{args.format}'; the only format is gguf")
    if args.outtype not in OUTTYPES:
        raise ConfigError(f"unknown --outtype '{args.outtype}'{suggest(args.outtype, OUTTYPES)}; use one of "
                          f"{', '.join(OUTTYPES)}")
    check_model_folder(args.model)
    name = Path(args.model).resolve().name
    out = Path(args.output) if args.output else Path(args.model) / f"{name}-{args.outtype}.gguf"
    modelfile = out.with_suffix(".Modelfile")
    with atomic_file(out, overwrite=args.overwrite) as tmp, atomic_file(modelfile, overwrite=True) as tmp_mf:
        info = export_gguf(args.model, tmp, args.outtype)
        tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=False)
        stops = [tokenizer.convert_ids_to_tokens(info["eot"])] if info["eot"] is not None else []
        if tokenizer.eos_token:
            stops.append(tokenizer.eos_token)
        tmp_mf.write_text(write_modelfile(out, info, {"stops": stops}), encoding="utf-8")
    size = out.stat().st_size / 1e6
    mode = "-cnv" if info["chat"] else '-p "Once upon a time"'
    print(f"Wrote {out} ({size:.1f} MB, {info['arch']}, {args.outtype}, {info['tensors']} tensors, pre-tokenizer "
          f"{info['pre']}) and {modelfile.name}\n"
          f"  llama.cpp:  llama-cli -m {out} {mode}\n"
          f"  Ollama:     cd {out.parent} && ollama create {name} -f {modelfile.name} && ollama run {name}\n"
          f"  LM Studio:  lms import {out}   (or copy the file into LM Studio's models folder)")
    return out
