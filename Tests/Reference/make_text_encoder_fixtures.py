#!/usr/bin/env python3
"""Writes the text-encoder parity fixtures for Tests/ModelsTests (BertTests, CLIPTextTests).

Small random-weight transformers models are built from configs, saved as Hugging Face folders
(config.json + model.safetensors, float32) and run on fixed inputs. Expected outputs are computed
in float64 from the very same float32 weights (the model is cast to double after saving), so
Sura's float32 results are compared against values whose own rounding error is negligible.
Attention runs in transformers' "eager" implementation.

Layout under Tests/ModelsTests/Fixtures/text_encoders/:
  bert_tiny/                BertModel with pooler: vocab 99, hidden 32, 2 layers, 4 heads, GELU,
                            written by save_pretrained (keys without the `bert.` prefix)
  bert_tiny_io.safetensors  padded batch (3 × 9) with token types: every hidden state, pooler
                            output, mean-pooled L2-normalised sentence embedding
  clip_sd/                  CLIPTextModel laid out like a Stable Diffusion 1.x `text_encoder/`
                            folder: `text_model.` keys, the old persistent `position_ids` buffer,
                            eos_token_id 2 (legacy argmax pooling), quick_gelu, 77 positions,
                            vocabulary of the tiny CLIP tokenizer in Fixtures/tokenizers
  clip_sd_io.safetensors    prompts tokenized by that tokenizer: padded to 77 without a mask (as
                            Stable Diffusion calls it) and padded to the longest with a mask
  clip_proj/                CLIPTextModelWithProjection: eos_token_id 5 (first-eos pooling),
                            hidden_act "gelu", hidden 48, projection 24, written by save_pretrained
  clip_proj_io.safetensors  hand-made ids where argmax(ids) is not the eos position
  minilm_sentences.json     all-MiniLM-L6-v2 sentence embeddings (mean pooling + L2
                            normalisation, as sentence-transformers' pipeline does) for 5 sentences;
                            only written when the real model is in cache/models/minilm

Run: /work/refenv/bin/python Tests/Reference/make_text_encoder_fixtures.py
"""
import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import (BertConfig, BertModel, CLIPTextConfig, CLIPTextModel,
                          CLIPTextModelWithProjection)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "ModelsTests", "Fixtures", "text_encoders")
TOKENIZERS = os.path.join(HERE, "..", "ModelsTests", "Fixtures", "tokenizers")
MINILM = os.path.join(HERE, "..", "..", "cache", "models", "minilm")


def randomize(model, generator):
    """Replaces every parameter by values that make each layer do visible work: linear weights
    N(0, 1/fan_in), embeddings N(0, 1), norm scales 1 + 0.1·N, biases 0.1·N."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if p.dim() == 1 and name.endswith(".weight"):
                p.copy_(1 + 0.1 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            elif "embedding" in name:
                p.copy_(noise)
            else:
                p.copy_(noise / p.shape[1] ** 0.5)


def fresh(folder):
    path = os.path.join(ROOT, folder)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return path


def check_size(path):
    size = os.path.getsize(path)
    assert size < 2_000_000, f"{path} is {size} bytes"


def save_io(name, io):
    path = os.path.join(ROOT, f"{name}_io.safetensors")
    save_file({k: v.float().contiguous() for k, v in io.items()}, path)
    check_size(path)


def bert_case():
    g = torch.Generator().manual_seed(11)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=24, type_vocab_size=2,
                        hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0)
    config._attn_implementation = "eager"
    model = BertModel(config, add_pooling_layer=True)
    randomize(model, g)
    path = fresh("bert_tiny")
    model.save_pretrained(path, safe_serialization=True)
    check_size(os.path.join(path, "model.safetensors"))
    model = model.double().eval()

    lengths = [9, 6, 3]
    ids = torch.zeros(3, 9, dtype=torch.long)
    mask = torch.zeros(3, 9, dtype=torch.long)
    types = torch.zeros(3, 9, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(1, 99, (n,), generator=g)
        mask[r, :n] = 1
    types[0, 5:] = 1
    types[1, 3:6] = 1
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        unmasked = model(input_ids=ids[:1, :7], output_hidden_states=False).last_hidden_state
    m = mask.unsqueeze(-1).double()
    mean = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
    io = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
          "last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output,
          "mean_pooled": mean, "sentence_embedding": torch.nn.functional.normalize(mean, p=2, dim=1),
          "unmasked_ids": ids[:1, :7], "unmasked_last_hidden_state": unmasked}
    for i, h in enumerate(out.hidden_states):
        io[f"hidden_states.{i}"] = h
    save_io("bert_tiny", io)


def clip_sd_case():
    """A Stable Diffusion 1.x-style text encoder folder, tokenized by the tiny CLIP tokenizer."""
    g = torch.Generator().manual_seed(12)
    tokenizer = Tokenizer.from_file(os.path.join(TOKENIZERS, "clip-tokenizer.json"))
    vocab = tokenizer.get_vocab_size()
    eos = tokenizer.token_to_id("<|endoftext|>")
    bos = tokenizer.token_to_id("<|startoftext|>")
    assert eos == vocab - 1, "legacy pooling needs <|endoftext|> to be the largest id"
    config = CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2, pad_token_id=1,
                            projection_dim=768)
    config._attn_implementation = "eager"
    model = CLIPTextModel(config)
    randomize(model, g)
    path = fresh("clip_sd")
    # The layout of an SD 1.x `text_encoder/` (transformers 4.x): `text_model.` keys and the
    # persistent int64 `position_ids` buffer that older versions saved.
    tensors = {f"text_model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tensors["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.long).unsqueeze(0)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    check_size(os.path.join(path, "model.safetensors"))
    sd_config = {
        "_name_or_path": "openai/clip-vit-large-patch14", "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
        "hidden_act": "quick_gelu", "hidden_size": 32, "initializer_factor": 1.0, "initializer_range": 0.02,
        "intermediate_size": 64, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
        "model_type": "clip_text_model", "num_attention_heads": 4, "num_hidden_layers": 2,
        "pad_token_id": 1, "projection_dim": 768, "torch_dtype": "float32",
        "transformers_version": "4.22.0.dev0", "vocab_size": vocab,
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(sd_config, f, indent=2, sort_keys=True)

    # The folder must load into transformers and give the very same model.
    reloaded = CLIPTextModel.from_pretrained(path, attn_implementation="eager").double().eval()
    model = model.double().eval()

    prompts = ["a red shirt next to a bag", "two sneakers", "a couple of blue dresses on the left of a coat"]
    rows = [tokenizer.encode(p).ids[:77] for p in prompts]
    fixed = torch.full((3, 77), eos, dtype=torch.long)
    longest = max(len(r) for r in rows)
    padded = torch.full((3, longest), eos, dtype=torch.long)
    mask = torch.zeros(3, longest, dtype=torch.long)
    for i, r in enumerate(rows):
        assert r[0] == bos and r[-1] == eos
        fixed[i, :len(r)] = torch.tensor(r)
        padded[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    io = {"fixed_ids": fixed, "ids": padded, "attention_mask": mask}
    with torch.no_grad():
        a = model(input_ids=fixed, output_hidden_states=True)
        b = model(input_ids=padded, attention_mask=mask, output_hidden_states=True)
        check = reloaded(input_ids=padded, attention_mask=mask).pooler_output
    assert (check - b.pooler_output).abs().max() < 1e-12, "the SD-style folder does not reload identically"
    for tag, out in (("fixed", a), ("masked", b)):
        io[f"{tag}.last_hidden_state"] = out.last_hidden_state
        io[f"{tag}.pooler_output"] = out.pooler_output
        for i, h in enumerate(out.hidden_states):
            io[f"{tag}.hidden_states.{i}"] = h
    save_io("clip_sd", io)
    with open(os.path.join(ROOT, "clip_sd_prompts.json"), "w") as f:
        json.dump({"prompts": prompts, "ids": rows}, f, indent=1)


def clip_proj_case():
    """A modern config: eos_token_id is the real end-of-text id, pooling takes its first position."""
    g = torch.Generator().manual_seed(13)
    config = CLIPTextConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=12, hidden_act="gelu",
                            layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=5, pad_token_id=1,
                            projection_dim=24)
    config._attn_implementation = "eager"
    model = CLIPTextModelWithProjection(config)
    randomize(model, g)
    path = fresh("clip_proj")
    model.save_pretrained(path, safe_serialization=True)
    check_size(os.path.join(path, "model.safetensors"))
    model = model.double().eval()
    # Row 0: ids larger than eos after it, so argmax(ids) ≠ the eos position. Row 2: two eos.
    ids = torch.tensor([[0, 12, 40, 63, 5, 60, 61, 62, 63, 63],
                        [0, 9, 33, 5, 1, 1, 1, 1, 1, 1],
                        [0, 50, 5, 5, 63, 1, 1, 1, 1, 1]], dtype=torch.long)
    mask = torch.tensor([[1] * 10, [1] * 4 + [0] * 6, [1] * 5 + [0] * 5], dtype=torch.long)
    with torch.no_grad():
        inner = model.text_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        out = model(input_ids=ids, attention_mask=mask)
    io = {"input_ids": ids, "attention_mask": mask, "last_hidden_state": inner.last_hidden_state,
          "pooler_output": inner.pooler_output, "text_embeds": out.text_embeds}
    for i, h in enumerate(inner.hidden_states):
        io[f"hidden_states.{i}"] = h
    save_io("clip_proj", io)


def minilm_case():
    if not os.path.exists(os.path.join(MINILM, "model.safetensors")):
        print("MiniLM not in cache/models/minilm: minilm_sentences.json left as it is")
        return
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    model = BertModel.from_pretrained(MINILM, attn_implementation="eager").double().eval()
    sentences = ["a cat on a sofa", "a kitten on a couch", "a red car",
                 "A couple of red sneakers next to a bag.", "Two dogs are playing in the snow!"]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    # sentence-transformers' all-MiniLM-L6-v2 pipeline: Transformer → Pooling(mean) → Normalize.
    m = batch["attention_mask"].unsqueeze(-1).double()
    emb = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1)
    ids = [[int(t) for t, k in zip(row, mk) if k] for row, mk in zip(batch["input_ids"], batch["attention_mask"])]
    data = {"source": "all-MiniLM-L6-v2, transformers eager attention in float64, mean pooling + L2 normalisation",
            "sentences": sentences, "input_ids": ids,
            "embeddings": [[round(float(x), 8) for x in row] for row in emb],
            "cosine": [[round(float(x), 8) for x in row] for row in emb @ emb.T]}
    path = os.path.join(ROOT, "minilm_sentences.json")
    with open(path, "w") as f:
        json.dump(data, f)
    check_size(path)
    c = emb @ emb.T
    print(f"MiniLM cosine(cat/sofa, kitten/couch) = {c[0, 1]:.4f}, cosine(cat/sofa, red car) = {c[0, 2]:.4f}")


def main():
    os.makedirs(ROOT, exist_ok=True)
    torch.manual_seed(0)
    bert_case()
    clip_sd_case()
    clip_proj_case()
    minilm_case()
    for root, _, files in os.walk(ROOT):
        for f in sorted(files):
            p = os.path.join(root, f)
            print(f"{os.path.relpath(p, ROOT)}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
