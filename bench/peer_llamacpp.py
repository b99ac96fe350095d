"""llama.cpp (through llama-cpp-python) as a deployed-runtime peer, in its own venv outside the repo.

    python bench/peer_llamacpp.py --ensure        # build / check the peer venv (compiles llama.cpp once)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

LLAMACPP_PIN = "llama-cpp-python==0.3.36"
PEER_NAME = "llamacpp"
MARKER = "squeezelab-peer.json"
# A CPU build tuned for this machine's instruction set; no GPU backends, no OpenMP surprises.
CMAKE_ARGS = "-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF"


def venv_dir() -> Path:
    root = os.environ.get("SQUEEZELAB_BENCH_VENVS") or "~/.cache/squeezelab/bench-venvs"
    return Path(root).expanduser() / PEER_NAME


def venv_python(path: Path | None = None) -> Path:
    return (path or venv_dir()) / "bin" / "python"


def _pins() -> dict[str, str]:
    return {"llama-cpp-python": LLAMACPP_PIN, "cmake_args": CMAKE_ARGS}


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def ensure_venv(quiet: bool = False) -> Path:
    path = venv_dir()
    marker = _read_marker(path)
    if marker and marker.get("pins") == _pins() and venv_python(path).exists():
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
    (path / MARKER).write_text(json.dumps({"pins": _pins(), "versions": versions}, indent=2) + "\n")
    return path


if __name__ == "__main__":
    print(ensure_venv())
