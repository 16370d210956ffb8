"""Serve smoke test and throughput: N concurrent /v1/completions with token-id prompts.

Usage: python serve_check.py URL CONCURRENCY REQUESTS PROMPT_TOKENS OUTPUT_TOKENS
Prints JSON: requests that completed with the full output, output tokens/s over the
run, and the slowest request's latency. Sends `ignore_eos` so every request does the
same work (as the CUDA targets' workload does).
"""
import json
import random
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def one(url, prompt_len, out_len, seed):
    rng = random.Random(seed)
    body = {"prompt": [rng.randrange(1000, 100000) for _ in range(prompt_len)], "max_tokens": out_len,
            "temperature": 0, "ignore_eos": True}
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    t = time.time()
    with urllib.request.urlopen(req, timeout=300) as r:
        resp = json.load(r)
    return resp["usage"]["completion_tokens"], time.time() - t


def main():
    url, conc, n, plen, olen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    one(url, plen, 4, 0)  # warm-up: captures graphs outside the timing
    t = time.time()
    with ThreadPoolExecutor(conc) as pool:
        results = list(pool.map(lambda i: one(url, plen, olen, i), range(n)))
    wall = time.time() - t
    tokens = sum(r[0] for r in results)
    print(json.dumps({"concurrency": conc, "requests": n, "complete": sum(r[0] == olen for r in results),
                      "output_tok_s": tokens / wall, "max_latency_s": max(r[1] for r in results)}))


if __name__ == "__main__":
    main()
