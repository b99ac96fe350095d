"""llm-compressor as a benchmark peer, run in its own virtual environment outside the repository.

    python bench/peer_llmcompressor.py --ensure          # create / check the peer venv, print its versions
    python bench/peer_llmcompressor.py JOB.json          # run one job, print its JSON result

llm-compressor pins torch, transformers and compressed-tensors to its own ranges, so it never
shares our venv: ``ensure_venv`` builds ``~/.cache/squeezelab/bench-venvs/llmcompressor``
(``$SQUEEZELAB_BENCH_VENVS`` overrides the parent folder), and ``run_peer`` runs
``bench/peer_llmcompressor_job.py`` there as a subprocess. The job format is documented in that
file; the result is the JSON object it prints on its last stdout line.

This module uses the standard library only, so any caller (our venv, a bare python) can import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import peer_venv  # noqa: E402

TORCH_PIN = "torch==2.13.0"  # first: a local CPU wheel here; a bare torch would pull a CUDA build
LLMCOMPRESSOR_PIN = "llmcompressor==0.14.0.1"
PEER_NAME = "llmcompressor"
JOB_SCRIPT = Path(__file__).resolve().parent / "peer_llmcompressor_job.py"
DEFAULT_TIMEOUT_S = 30 * 60
_VERSIONS_SNIPPET = (
    "import json\n"
    "from importlib.metadata import version\n"
    "names = ['torch', 'llmcompressor', 'transformers', 'compressed-tensors', 'datasets', 'accelerate']\n"
    "print(json.dumps({n: version(n) for n in names}))\n"
)


def venv_dir() -> Path:
    """Where the peer venv lives (see ``bench/peer_venv.py``)."""
    return peer_venv.venv_dir(PEER_NAME)


def venv_python(path: Path | None = None) -> Path:
    """The peer venv's interpreter."""
    return peer_venv.venv_python(path or venv_dir())


def _pins() -> dict[str, str]:
    return {"torch": TORCH_PIN, "llmcompressor": LLMCOMPRESSOR_PIN}



def _pip(python: Path, args: list[str], log) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"peer venv: `pip install {' '.join(args)}` failed (exit {proc.returncode}); see {log.name}")


def ensure_venv(quiet: bool = False) -> Path:
    """Create the llm-compressor venv if missing or built with other pins; return its folder.

    Installs ``TORCH_PIN`` first, then ``LLMCOMPRESSOR_PIN`` together with the same torch pin so pip
    resolves llm-compressor's dependencies around the CPU torch already there. A marker file
    (``squeezelab-peer.json``) records the pins and the versions installed; a venv whose marker
    matches the pins is reused as is. pip's output goes to ``install.log`` in the venv folder.
    """
    path = venv_dir()
    if peer_venv.is_built(path, _pins()):
        return path
    if not quiet:
        print(f"building the llm-compressor peer venv in {path} (a few minutes) ...", file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    # clear=True: a venv with other pins or a half-finished install starts over.
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    python = venv_python(path)
    with open(path / "install.log", "w") as log:
        _pip(python, [TORCH_PIN], log)
        _pip(python, [LLMCOMPRESSOR_PIN, TORCH_PIN], log)
    out = subprocess.run([str(python), "-c", _VERSIONS_SNIPPET], capture_output=True, text=True, check=True)
    versions = json.loads(out.stdout.strip().splitlines()[-1])
    peer_venv.write_marker(path, _pins(), versions)
    return path


def installed_versions() -> dict[str, str] | None:
    """The versions recorded when the peer venv was built, or None when there is none yet."""
    marker = peer_venv.read_marker(venv_dir())
    return marker.get("versions") if marker else None


def save_calibration_ids(ids, path: Path) -> Path:
    """Write calibration token ids (a list of lists, or a 2-D tensor / array) as the JSON a job reads."""
    rows = ids.tolist() if hasattr(ids, "tolist") else [list(r) for r in ids]
    rows = [[int(t) for t in (r.tolist() if hasattr(r, "tolist") else r)] for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return path


def run_peer(job: dict, timeout_s: float = DEFAULT_TIMEOUT_S, log_path: Path | None = None) -> dict:
    """Run one llm-compressor job in the peer venv and return the JSON result it printed.

    ``job``: ``{"model_dir", "out_dir", "calibration_ids", "recipe": {...}, "threads"}`` (see
    ``bench/peer_llmcompressor_job.py``). The subprocess's stdout and stderr go to ``log_path`` when
    given. Raises RuntimeError (with the output's tail) when the job fails, and
    ``subprocess.TimeoutExpired`` past ``timeout_s``.
    """
    python = venv_python(ensure_venv())
    threads = str(job.get("threads", 2))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="squeezelab-peer-") as tmp:
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job, indent=2))
        proc = subprocess.run([str(python), str(JOB_SCRIPT), str(job_file)], capture_output=True, text=True,
                              timeout=timeout_s, env=env, cwd=tmp)
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        Path(log_path).write_text(f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + "\n" + proc.stderr).strip().splitlines()[-30:])
        raise RuntimeError(f"llm-compressor job failed (exit {proc.returncode}):\n{tail}")
    try:
        return json.loads(lines[-1])
    except ValueError as exc:
        raise RuntimeError(f"llm-compressor job printed no JSON result; last line: {lines[-1]!r}") from exc


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", nargs="?", help="a job JSON file (see bench/peer_llmcompressor_job.py)")
    parser.add_argument("--ensure", action="store_true", help="only create / check the peer venv")
    parser.add_argument("--log", type=Path, default=None, help="write the job's stdout/stderr here")
    args = parser.parse_args(argv)
    if args.ensure or not args.job:
        path = ensure_venv()
        print(json.dumps({"venv": str(path), **(installed_versions() or {})}))
        return
    print(json.dumps(run_peer(json.loads(Path(args.job).read_text()), log_path=args.log)))


if __name__ == "__main__":
    main()
