#!/usr/bin/env python3
"""llama.cpp's speed on completion prompts, beside `cargo run --example tokens_per_sec --
--card <card> --completion` on the same file: the same five prompts as "Q: <prompt>\\nA:", greedy,
no stop sequence, the same thread count and token limit. For a base model (no chat template),
where ../shared/bench/llama_cpp_baseline.py's chat completions do not apply.

  /tmp/llama-venv/bin/python examples/llama_cpp_completion.py MODEL.gguf [--threads 2] [--max-tokens 48]
"""
import argparse, json, sys, time

# The prompts of examples/tokens_per_sec.rs.
PROMPTS = [
    "What is the capital of France? Answer in one word.",
    "What is 17 times 23?",
    "Write a haiku about governance.",
    "Classify this support ticket intent: 'My card was charged twice for the same order'. "
    "Answer with one of: billing, shipping, technical, other.",
    "Explain in two sentences why small models are cheaper to serve than large ones.",
]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    a = ap.parse_args()
    from llama_cpp import Llama
    t0 = time.perf_counter()
    llm = Llama(model_path=a.model, n_threads=a.threads, n_ctx=2048, verbose=False)
    load_s = time.perf_counter() - t0
    llm.create_completion("Q: hi\nA:", max_tokens=4, temperature=0.0)  # warm-up
    tot_c, tot_s = 0, 0.0
    for p in PROMPTS:
        t = time.perf_counter()
        r = llm.create_completion(f"Q: {p}\nA:", max_tokens=a.max_tokens, temperature=0.0)
        dt = time.perf_counter() - t
        u = r["usage"]
        tot_c += u["completion_tokens"]; tot_s += dt
        print(json.dumps({"prompt": p[:40], "prompt_tokens": u["prompt_tokens"],
                          "completion_tokens": u["completion_tokens"], "seconds": round(dt, 4),
                          "completion_tok_per_s": round(u["completion_tokens"] / dt, 1)}))
    print(json.dumps({"summary": True, "load_s": round(load_s, 3), "requests": len(PROMPTS),
                      "completion_tokens": tot_c, "seconds": round(tot_s, 3),
                      "completion_tok_per_s": round(tot_c / tot_s, 1), "threads": a.threads}))

if __name__ == "__main__":
    sys.exit(main())
