#!/usr/bin/env python3
"""Writes the Llama decoder fixtures for Tests/ModelsTests/LlamaTests.swift.

Two small random-weight `LlamaForCausalLM`s with grouped-query attention are built by
transformers from configs and saved as Hugging Face folders (config.json + model.safetensors,
float32). Expected outputs are computed in float64 from the very same float32 weights (the model
is cast to double after saving), in transformers' "eager" attention. The same weights are also
written as GGUF files (F32 tensors) the way llama.cpp's convert_hf_to_gguf.py does it: tensors
renamed to `token_embd.weight`, `blk.N.attn_q.weight`, …, and the rows of Q and K permuted per
head from the rotate-half layout to GGML's adjacent-pair layout.

A tiny byte-level BPE (vocabulary 300: 3 special tokens, the 256 byte symbols, 41 merges, with
SmolLM2's pre-tokenizer: single digits, then the GPT-2 pattern) is trained here and stored in the
GGUF tokenizer metadata, so that `convert` can be checked to write a tokenizer.json equivalent to it.

Layout under Tests/ModelsTests/Fixtures/llama/:
  untied/                 hidden 64, 2 layers, 4 heads / 2 KV heads, FFN 96, vocab 300,
                          rope_theta 1e5, separate lm_head, no biases
  tied/                   hidden 48, 3 layers, 6 heads / 2 KV heads (head_dim 8), FFN 80,
                          tied embeddings, attention_bias = true (q/k/v/o biases)
  untied.gguf, tied.gguf  the same weights as GGUF (F32), with the tokenizer metadata
  llama_io.safetensors    per model and padding side ("left", "right"): input ids (3 prompts of
                          7, 4 and 2 tokens, padded to 7), attention mask, position ids (as
                          `generate` computes them: cumsum(mask) − 1), every hidden state
                          (transformers' `hidden_states`: embeddings, layer outputs, the last
                          after the final norm) and the logits. Ids and masks are stored as floats.
  generation.json         greedy continuations of each prompt alone (with and without a
                          repetition penalty) from transformers' `generate`, and the logits
                          processors (repetition penalty, temperature, top-k, top-p) applied to
                          random scores
  tokenizer.json          the trained tiny tokenizer (reference for the converted one)
  tokenizer_expected.json texts and their ids from that tokenizer
  bad_architecture.gguf   general.architecture = "gpt2"
  bad_ffn.gguf            llama.feed_forward_length = 40 while blk.0.ffn_gate.weight has 32 rows
  bad_missing_key.gguf    no llama.block_count

Run: /work/refenv/bin/python Tests/Reference/make_llama_fixtures.py
"""
import json
import os
import shutil

import numpy as np
import torch
from gguf import GGUFWriter
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                    TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "ModelsTests", "Fixtures", "llama")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                 "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

MODELS = {
    "untied": dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, rope_theta=1e5,
                   max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
                   bos_token_id=1, eos_token_id=2, pad_token_id=2),
    "tied": dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                 num_attention_heads=6, num_key_value_heads=2, rope_theta=1e5,
                 max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=True,
                 attention_bias=True, bos_token_id=1, eos_token_id=2, pad_token_id=2),
}

PROMPTS = [[1, 17, 200, 45, 99, 3, 250], [1, 80, 81, 82], [1, 299]]


# ----------------------------------------------------------------------------------------------
# Tokenizer

def corpus():
    lines = [
        "The capital of France is Paris.", "What is the capital of France?",
        "a couple of red sneakers next to a bag", "two blue shirts and a green dress",
        "Hello world! Hello there, hello again.", "In 2024 there were 365 days and 12 months.",
        "the quick brown fox jumps over the lazy dog", "def f(x):\n    return x * 2\n",
        "Paris, London, Berlin, Madrid, Rome", "a photo of a cat sitting on the mat",
    ]
    return lines * 20


def train_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    assert tok.get_vocab_size() == 300, tok.get_vocab_size()
    return tok


def tokenizer_arrays(tok):
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    for added in data["added_tokens"]:
        tokens[added["id"]] = added["content"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return tokens, merges, types


# ----------------------------------------------------------------------------------------------
# Models

def randomize(model, generator):
    """Weights that make every layer do visible work: linear weights N(0, 1/fan_in), the
    embedding N(0, 1), norm scales 1 + 0.1·N, biases 0.1·N."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() == 1 and name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)


def permute_for_gguf(w, heads):
    """convert_hf_to_gguf.py's LlamaModel.permute: per head, rows (half, i) → (i, half)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    assert parts[:2] == ["model", "layers"], hf
    module = ".".join(parts[3:-1])
    return f"blk.{parts[2]}.{GGUF_NAMES[module]}.{parts[-1]}"


def write_gguf(path, cfg, state, tok_arrays, architecture="llama", skip_keys=(), overrides=None):
    overrides = overrides or {}
    w = GGUFWriter(path, architecture)
    w.add_name("sura-tiny-llama")
    w.add_file_type(0)
    values = {
        "context_length": cfg["max_position_embeddings"], "embedding_length": cfg["hidden_size"],
        "block_count": cfg["num_hidden_layers"], "feed_forward_length": cfg["intermediate_size"],
        "head_count": cfg["num_attention_heads"], "head_count_kv": cfg["num_key_value_heads"],
    }
    values.update(overrides)
    for key, value in values.items():
        if key not in skip_keys:
            w.add_uint32(f"{architecture}.{key.replace('head_count', 'attention.head_count')}", value)
    w.add_float32(f"{architecture}.rope.freq_base", cfg["rope_theta"])
    w.add_float32(f"{architecture}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])
    w.add_uint32(f"{architecture}.rope.dimension_count", cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_uint32(f"{architecture}.vocab_size", cfg["vocab_size"])
    if tok_arrays is not None:
        tokens, merges, types = tok_arrays
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("smollm")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(cfg["bos_token_id"])
        w.add_eos_token_id(cfg["eos_token_id"])
        w.add_pad_token_id(cfg["pad_token_id"])
        w.add_add_bos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for name, t in state.items():
        a = t.detach().to(torch.float32).numpy().copy()
        if ".q_proj." in name:
            a = permute_for_gguf(a, heads)
        elif ".k_proj." in name:
            a = permute_for_gguf(a, kv)
        w.add_tensor(gguf_name(name), np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def padded(prompts, side, pad):
    length = max(len(p) for p in prompts)
    ids, mask = [], []
    for p in prompts:
        n = length - len(p)
        if side == "left":
            ids.append([pad] * n + p)
            mask.append([0] * n + [1] * len(p))
        else:
            ids.append(p + [pad] * n)
            mask.append([1] * len(p) + [0] * n)
    ids, mask = torch.tensor(ids), torch.tensor(mask)
    # As GenerationMixin computes them: position of each real token among the real tokens.
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return ids, mask, positions


def build(name, cfg, tok_arrays, io, generation):
    torch.manual_seed(0)
    config = LlamaConfig(**cfg)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).eval()
    randomize(model, torch.Generator().manual_seed(1234 + len(name)))
    folder = os.path.join(OUT, name)
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(folder, extra)):
            os.remove(os.path.join(folder, extra))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if cfg["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)
    write_gguf(os.path.join(OUT, f"{name}.gguf"), cfg, state, tok_arrays)

    model = model.double()
    with torch.no_grad():
        for side in ("left", "right"):
            ids, mask, positions = padded(PROMPTS, side, cfg["pad_token_id"])
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                        output_hidden_states=True, use_cache=False)
            key = f"{name}.{side}"
            io[f"{key}.input_ids"] = ids.float()
            io[f"{key}.attention_mask"] = mask.float()
            io[f"{key}.position_ids"] = positions.float()
            for i, h in enumerate(out.hidden_states):
                io[f"{key}.hidden_states.{i}"] = h.float().contiguous()
            io[f"{key}.logits"] = out.logits.float().contiguous()

        gens = []
        for penalty in (1.0, 1.3):
            for p in PROMPTS:
                ids = torch.tensor([p])
                seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=8, repetition_penalty=penalty,
                                     eos_token_id=None, pad_token_id=cfg["pad_token_id"])
                gens.append({"prompt": p, "repetition_penalty": penalty,
                             "new_tokens": seq[0, len(p):].tolist()})
        generation[name] = gens


def processors_cases():
    g = torch.Generator().manual_seed(99)
    cases = []
    for case in [dict(penalty=1.3, temperature=0.7, top_k=5, top_p=1.0),
                 dict(penalty=1.0, temperature=1.0, top_k=0, top_p=0.8),
                 dict(penalty=1.5, temperature=1.3, top_k=10, top_p=0.9),
                 dict(penalty=1.2, temperature=0.5, top_k=3, top_p=0.5)]:
        scores = torch.randn(1, 40, generator=g) * 3
        previous = torch.randint(0, 40, (1, 9), generator=g)
        s = scores.clone()
        if case["penalty"] != 1.0:
            s = RepetitionPenaltyLogitsProcessor(case["penalty"])(previous, s)
        if case["temperature"] != 1.0:
            s = TemperatureLogitsWarper(case["temperature"])(previous, s)
        if case["top_k"] > 0:
            s = TopKLogitsWarper(case["top_k"])(previous, s)
        if case["top_p"] < 1.0:
            s = TopPLogitsWarper(case["top_p"])(previous, s)
        cases.append(dict(case, scores=scores[0].tolist(), previous=previous[0].tolist(),
                          processed=[None if v == float("-inf") else v for v in s[0].tolist()]))
    return cases


def bad_ggufs(tok_arrays):
    cfg = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, rope_theta=1e4,
               max_position_embeddings=16, rms_norm_eps=1e-5)
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g)
    state = {
        "model.embed_tokens.weight": r(32, 16),
        "model.layers.0.input_layernorm.weight": r(16),
        "model.layers.0.self_attn.q_proj.weight": r(16, 16),
        "model.layers.0.self_attn.k_proj.weight": r(8, 16),
        "model.layers.0.self_attn.v_proj.weight": r(8, 16),
        "model.layers.0.self_attn.o_proj.weight": r(16, 16),
        "model.layers.0.post_attention_layernorm.weight": r(16),
        "model.layers.0.mlp.gate_proj.weight": r(32, 16),
        "model.layers.0.mlp.up_proj.weight": r(32, 16),
        "model.layers.0.mlp.down_proj.weight": r(16, 32),
        "model.norm.weight": r(16),
    }
    write_gguf(os.path.join(OUT, "bad_architecture.gguf"), cfg, state, None, architecture="gpt2")
    write_gguf(os.path.join(OUT, "bad_ffn.gguf"), cfg, state, None, overrides={"feed_forward_length": 40})
    write_gguf(os.path.join(OUT, "bad_missing_key.gguf"), cfg, state, None, skip_keys=("block_count",))


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = train_tokenizer()
    tok.save(os.path.join(OUT, "tokenizer.json"))
    arrays = tokenizer_arrays(tok)
    texts = ["The capital of France is Paris.", "Hello world! 12345", "a red sneaker next to a bag",
             "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
             "  spaces\tand\nnewlines  ", "naïve café ☕"]
    expected = {"texts": texts, "ids": [tok.encode(t).ids for t in texts]}
    with open(os.path.join(OUT, "tokenizer_expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)

    io, generation = {}, {}
    for name, cfg in MODELS.items():
        build(name, cfg, arrays, io, generation)
    save_file(io, os.path.join(OUT, "llama_io.safetensors"))
    generation["processors"] = processors_cases()
    with open(os.path.join(OUT, "generation.json"), "w") as f:
        json.dump(generation, f, indent=1)
    bad_ggufs(arrays)
    for root, _, files in os.walk(OUT):
        for fn in files:
            size = os.path.getsize(os.path.join(root, fn))
            assert size < 2_000_000, (fn, size)
            print(f"{os.path.relpath(os.path.join(root, fn), OUT)}: {size} bytes")


if __name__ == "__main__":
    main()
