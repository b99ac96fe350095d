"""Runs inside the llama.cpp peer venv: times GGUF files on request, one JSON line per request and answer.

    python bench/peer_llamacpp_job.py          # then JSON requests on stdin, answers on stdout

Requests (one JSON object per line):

* ``{"op": "time", "file": F, "prompt": [ids], "new_tokens": N, "threads": T}`` - prefill the prompt,
  then N greedy tokens one ``eval`` at a time (llama-cpp-python's Python loop, as an application
  would drive it). Answer: ``{"prefill_s", "decode_s", "tokens": [greedy ids], "n_ctx"}``.
* ``{"op": "nll", "file": F, "windows": [[ids]], "threads": T}`` - summed negative log-likelihood of
  every window's tokens after the first (the perplexity protocol of ``core.evaluate``), from
  llama.cpp's own logits. Answer: ``{"nll", "tokens"}``.
* ``{"op": "logits", "file": F, "tokens": [ids], "threads": T, "kv_f32": bool}`` - llama.cpp's logits at every
  position of one sequence evaluated in one batch (``logits_all``; ``kv_f32``: an fp32 KV cache instead of
  llama.cpp's default fp16 one). Answer: ``{"logits": [[float] per position]}``.
* ``{"op": "versions"}``, ``{"op": "quit"}``.

A file is loaded once (kept per file and thread count); the KV cache is cleared before every run.
Standard library, numpy and llama_cpp only: this file never imports SqueezeLab.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

_models: dict[tuple[str, int, bool, bool], object] = {}


def _model(path: str, threads: int, all_logits: bool, n_ctx: int, kv_f32: bool = False):  # noqa: ANN202
    import llama_cpp

    key = (path, threads, all_logits, kv_f32)
    model = _models.get(key)
    if model is None or model.n_ctx() < n_ctx:
        cache = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if kv_f32 else {}
        model = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=max(n_ctx, 512),
                                n_batch=512, logits_all=all_logits, verbose=False, **cache)
        _models[key] = model
    return model


def _last_logits(model) -> np.ndarray:  # noqa: ANN001
    """The logits of the last position evaluated (llama.cpp's own buffer, no copy into ``scores``)."""
    return np.ctypeslib.as_array(model._ctx.get_logits_ith(-1), shape=(model.n_vocab(),))


def _time(request: dict) -> dict:
    prompt, new_tokens = list(request["prompt"]), int(request["new_tokens"])
    model = _model(request["file"], int(request["threads"]), False, len(prompt) + new_tokens + 8)
    model.reset()
    started = time.perf_counter()
    model.eval(prompt)
    token = int(np.argmax(_last_logits(model)))
    prefill_s = time.perf_counter() - started
    tokens = [token]
    started = time.perf_counter()
    for _ in range(new_tokens):
        model.eval([token])
        token = int(np.argmax(_last_logits(model)))
        tokens.append(token)
    return {"prefill_s": prefill_s, "decode_s": time.perf_counter() - started, "tokens": tokens,
            "n_ctx": model.n_ctx()}


def _nll(request: dict) -> dict:
    windows = request["windows"]
    model = _model(request["file"], int(request["threads"]), True, max(len(w) for w in windows) + 8)
    total, count = 0.0, 0
    for window in windows:
        model.reset()
        model.eval(list(window))
        logits = np.asarray(model.scores[:len(window) - 1], dtype=np.float64)  # position i predicts token i+1
        logits -= logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= float(log_probs[np.arange(len(window) - 1), window[1:]].sum())
        count += len(window) - 1
    return {"nll": total, "tokens": count}


def _logits(request: dict) -> dict:
    tokens = list(request["tokens"])
    model = _model(request["file"], int(request["threads"]), True, len(tokens) + 8, bool(request.get("kv_f32")))
    model.reset()
    model.eval(tokens)
    return {"logits": np.asarray(model.scores[:len(tokens)], dtype=np.float32).tolist()}


def _versions() -> dict:
    import llama_cpp

    return {"llama-cpp-python": llama_cpp.__version__, "system_info": llama_cpp.llama_print_system_info().decode()}


def main() -> None:
    handlers = {"time": _time, "nll": _nll, "logits": _logits, "versions": lambda _: _versions()}
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "quit":
            break
        try:
            answer = handlers[request["op"]](request)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which decides
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
