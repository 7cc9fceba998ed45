"""``python -m pipebd perplexity``: is the SmolLM2 teacher a real language model?

Loads SmolLM2-135M-Instruct from the GGUF file of the optional extra (:mod:`pipebd.smollm2`),
checks that its weights load into ``LlamaForCausalLM(config())`` with a strict key match (what the
``llm-smol`` workload does with ``--teacher-weights smollm2``), and compares the causal-LM
perplexity of the first ``--tokens`` tokens of a text (default: the standard library's
``argparse.py``) under the teacher and under the same architecture at random init (seed 0): a
trained model scores far below the random one (~12 against ~60,000 on 512 tokens of argparse.py).
Exit status 2 (with how to install it) when the extra is not installed.
"""

from __future__ import annotations

import argparse
import inspect
import os
import time

from ..errors import ConfigError

__all__ = ["add_cli", "default_text"]


def default_text() -> str:
    """The standard library's own ``argparse.py``: Python source every interpreter has."""
    return inspect.getsourcefile(argparse)


def _cmd_perplexity(args: argparse.Namespace) -> int:
    from .. import smollm2

    if not smollm2.available():
        raise ConfigError(f"{smollm2.MISSING} ({smollm2.problem()})")  # the CLI prints it and exits 2
    if args.tokens < 2:
        raise ConfigError(f"--tokens must be at least 2 (a next-token loss needs a pair), got {args.tokens}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    path = args.text or default_text()
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--text {path!r} cannot be read as UTF-8 text ({e}); pass a readable text file") from e

    import torch
    from transformers import LlamaForCausalLM

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    teacher = smollm2.load_model()
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok = smollm2.tokenizer()
    t_tok = time.perf_counter() - t0
    cfg = smollm2.config()
    ids = tok(text, add_special_tokens=False)["input_ids"][:args.tokens]
    if len(ids) < 2:
        raise ConfigError(f"--text {path!r} has {len(ids)} token(s); it needs at least 2")
    if len(ids) > cfg.max_position_embeddings:
        raise ConfigError(f"--tokens {len(ids)} exceeds the model's {cfg.max_position_embeddings} positions")
    ids = torch.tensor(ids, dtype=torch.long)

    n = sum(p.numel() for p in teacher.parameters())
    tied = teacher.lm_head.weight is teacher.model.embed_tokens.weight
    print(f"perplexity: SmolLM2-135M-Instruct from {smollm2.gguf_path()}")
    print(f"  loaded in {t_load:.1f} s ({n / 1e6:.1f} M parameters, fp32, {cfg.num_hidden_layers} layers, hidden "
          f"{cfg.hidden_size}, {cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV heads, vocabulary "
          f"{cfg.vocab_size}, embeddings {'tied' if tied else 'untied'}); tokenizer in {t_tok:.1f} s")

    torch.manual_seed(0)
    t0 = time.perf_counter()
    fresh = LlamaForCausalLM(cfg).eval()
    t_init = time.perf_counter() - t0
    sd = smollm2.state_dict()
    probe = LlamaForCausalLM(cfg)
    result = probe.load_state_dict(sd, strict=True)
    print(f"  strict key match: {len(sd)} keys of the GGUF load into LlamaForCausalLM(config()), "
          f"missing {list(result.missing_keys) or 'none'}, unexpected {list(result.unexpected_keys) or 'none'}")
    del probe

    print(f"  text: first {len(ids)} tokens of {path}")
    for label, model, extra in (("SmolLM2 teacher", teacher, ""),
                                ("random init (seed 0)", fresh, f", init {t_init:.1f} s")):
        t0 = time.perf_counter()
        ppl = smollm2.perplexity(model, ids)
        print(f"  {label:<22} perplexity {ppl:>12,.2f}   (forward {time.perf_counter() - t0:.2f} s{extra})")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity of the SmolLM2 teacher (optional extra) vs the same "
                                          "architecture at random init")
    p.add_argument("--text", default=None, metavar="FILE",
                   help="UTF-8 text file to score (default: the standard library's argparse.py)")
    p.add_argument("--tokens", type=int, default=512, metavar="N", help="score its first N tokens (default 512)")
    p.add_argument("--threads", type=int, default=None, metavar="K", help="torch CPU threads (default: torch's)")
    p.set_defaults(func=_cmd_perplexity)
