#!/usr/bin/env python3
"""Peer for `sura bench llm`: llama.cpp (llama-cpp-python) on the same GGUF, same thread count.

Prints one JSON object: prefill tokens/s for `batch` prompts of `tokens` tokens each, and decode
tokens/s for `decode` greedy tokens after a short prompt. Install with `pip install llama-cpp-python`.
"""
import argparse
import json
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--decode", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    try:
        from llama_cpp import Llama
    except ImportError:
        print(json.dumps({"error": "llama-cpp-python is not installed"}))
        return 0
    llm = Llama(model_path=a.model, n_ctx=512, n_batch=512, n_threads=a.threads,
                n_threads_batch=a.threads, verbose=False, logits_all=False)
    # Fixed token ids (not text) so both sides process exactly batch × tokens tokens.
    prompts = [[(17 * b + 31 * i) % 40000 + 100 for i in range(a.tokens)] for b in range(a.batch)]
    best = float("inf")
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for ids in prompts:
            llm.reset()
            llm.eval(ids)
        best = min(best, time.perf_counter() - t0)
    prefill = a.batch * a.tokens / best
    llm.reset()
    llm.eval(prompts[0][:8])
    t0 = time.perf_counter()
    for _ in range(a.decode):
        tok = llm.sample(top_k=1)
        llm.eval([tok])
    decode = a.decode / (time.perf_counter() - t0)
    print(json.dumps({"peer": "llama.cpp", "threads": a.threads, "prefill_tokens_per_s": prefill,
                      "decode_tokens_per_s": decode}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
