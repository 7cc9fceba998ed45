"""Decoder-layer workloads: blockwise distillation of a Llama language model, a library of
candidate students per block (NVIDIA Puzzle's "blockwise local distillation").

The teacher is Hugging Face ``transformers``' ``LlamaForCausalLM`` (RMSNorm, rotary positions,
grouped-query attention, SwiGLU FFN), cut into blocks of ``layers_per_block`` consecutive decoder
layers: block 0 starts with the frozen token embedding (its input is token ids), the last block
ends with the final RMSNorm (its output is the final hidden state) and, with ``logits_kd``, the
(tied) LM head, so the last boundary is the logits. Every other boundary is a hidden state
``(sequence, hidden)`` — fixed shapes, so a relay never changes size.

A student block is a :class:`CandidateLibrary`: several replacement blocks (Puzzle, Bercovich et
al. 2025, §3), each trained against the same teacher input and output of its block, so one teacher
relay feeds all of them and a block's student cost is the sum over its candidates. The loss is
the normalised MSE of ModelOpt's block-wise distillation — the MSE divided by the teacher
output's mean square — summed over candidates (candidates share no parameters, so every
candidate's gradient is exactly the one it would get trained alone); on the logits (last block
with ``logits_kd``) it is the KL divergence of the student's next-token distribution from the
teacher's. Candidates (:data:`CANDIDATES`), each made of ``transformers``' own Llama modules:

- ``ffnF``: the FFN's intermediate width × F (``ffn1`` is the parent layer; F in (0, 1]);
- ``kvK``: K key/value heads (grouped-query attention with fewer groups; K divides the heads);
- ``linattn``: attention replaced by one linear map of the hidden state;
- ``noattn`` / ``noffn``: attention or FFN removed (the layer keeps the other half).

Candidates start from their parent's weights, as Puzzle initialises its replacement blocks: the
first F × width FFN channels, key/value heads averaged over the groups they merge, a linear map
of ``o_proj · v_proj`` (what attention computes when every token attends only to itself).

Libraries per block come from ``--candidates``: a preset (``uniform``, ``uneven``), one list for
every block, or ranges of blocks (:mod:`.llm_candidates` parses and checks them).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .llm_candidates import CANDIDATES, PRESETS, parse_candidates
from .registry import (BlockOwnership, NotOwned, Workload, WorkloadError, WorkloadOptions, load_teacher_weights,
                       register_workload)

__all__ = ["LlamaArch", "TINY", "SMOL", "CANDIDATES", "PRESETS", "llama_config", "parse_candidates",
           "TeacherBlock", "VariantLayer", "CandidateLibrary"]


@dataclass(frozen=True)
class LlamaArch:
    """The sizes of a Llama decoder (what ``LlamaConfig`` needs) and a default sequence length."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    seq: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    tied: bool = True
    max_positions: int = 8192


#: ``llm-tiny``: for tests (4 layers, hidden 128, 4 heads / 2 KV heads, vocabulary 512, sequence 64).
TINY = LlamaArch(layers=4, hidden=128, heads=4, kv_heads=2, ffn=256, vocab=512, seq=64)
#: ``llm-smol``: the SmolLM2-135M architecture; a short default sequence so a CPU step is seconds.
SMOL = LlamaArch(layers=30, hidden=576, heads=9, kv_heads=3, ffn=1536, vocab=49152, seq=64,
                 rope_theta=100000.0)


def _llama():
    """``transformers``' Llama modules, imported on first use (an image run never pays for them)."""
    from transformers.models.llama import modeling_llama

    return modeling_llama


def llama_config(arch: LlamaArch, **changes) -> "LlamaConfig":
    """The ``transformers`` config of ``arch`` (SDPA attention: causal without a mask tensor)."""
    from transformers import LlamaConfig

    kw = dict(vocab_size=arch.vocab, hidden_size=arch.hidden, intermediate_size=arch.ffn,
              num_hidden_layers=arch.layers, num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads,
              rms_norm_eps=arch.rms_eps, tie_word_embeddings=arch.tied, max_position_embeddings=arch.max_positions,
              rope_parameters={"rope_type": "default", "rope_theta": arch.rope_theta}, attn_implementation="sdpa",
              use_cache=False)
    kw.update(changes)
    return LlamaConfig(**kw)


def _positions(h: torch.Tensor, rotary: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
    return rotary(h, pos)


class TeacherBlock(nn.Module):
    """Consecutive decoder layers of the teacher, with the embedding (block 0), the final norm
    (last block) and the LM head (last block, logits distillation) where they belong."""

    def __init__(self, layers: list[nn.Module], rotary: nn.Module, *, embed: nn.Module | None = None,
                 norm: nn.Module | None = None, head: nn.Module | None = None):
        super().__init__()
        self.embed, self.layers, self.norm, self.head = embed, nn.ModuleList(layers), norm, head
        self.rotary = [rotary]  # a list: shared buffers, not a submodule (no state-dict keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        pe = _positions(h, self.rotary[0])
        for layer in self.layers:
            h = layer(h, position_embeddings=pe)
        if self.norm is not None:
            h = self.norm(h)
        return self.head(h) if self.head is not None else h


class _LinearAttention(nn.Linear):
    """Attention replaced by one linear map of the (normed) hidden state (Puzzle's "linear")."""

    def forward(self, x: torch.Tensor, position_embeddings=None) -> tuple[torch.Tensor, None]:
        return super().forward(x), None


class VariantLayer(nn.Module):
    """One decoder layer of a candidate: ``transformers``' Llama attention / MLP / RMSNorm, with
    the attention or FFN narrowed, replaced or removed (:data:`CANDIDATES`)."""

    def __init__(self, config: "LlamaConfig", name: str, index: int):
        super().__init__()
        hf = _llama()
        self.name = name
        cfg, attn, ffn = config, "full", True
        if name.startswith("ffn"):
            cfg = copy.copy(config)
            cfg.intermediate_size = max(1, round(float(name[3:]) * config.intermediate_size))
        elif name.startswith("kv"):
            cfg = copy.copy(config)
            cfg.num_key_value_heads = int(name[2:])
        elif name == "linattn":
            attn = "linear"
        elif name == "noattn":
            attn = None
        elif name == "noffn":
            ffn = False
        self.input_layernorm = hf.LlamaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps) if attn else None
        if attn == "full":
            self.self_attn = hf.LlamaAttention(cfg, layer_idx=index)
        elif attn == "linear":
            self.self_attn = _LinearAttention(cfg.hidden_size, cfg.hidden_size, bias=False)
        else:
            self.self_attn = None
        self.post_attention_layernorm = hf.LlamaRMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps) if ffn else None
        self.mlp = hf.LlamaMLP(cfg) if ffn else None

    def forward(self, h: torch.Tensor, position_embeddings) -> torch.Tensor:
        if self.self_attn is not None:
            h = h + self.self_attn(self.input_layernorm(h), position_embeddings=position_embeddings)[0]
        if self.mlp is not None:
            h = h + self.mlp(self.post_attention_layernorm(h))
        return h

    @torch.no_grad()
    def init_from(self, parent: nn.Module) -> None:
        """Start from the parent layer's weights (module docstring)."""
        if self.input_layernorm is not None:
            self.input_layernorm.weight.copy_(parent.input_layernorm.weight)
        if self.post_attention_layernorm is not None:
            self.post_attention_layernorm.weight.copy_(parent.post_attention_layernorm.weight)
        pa = parent.self_attn
        if isinstance(self.self_attn, _llama().LlamaAttention):
            a = self.self_attn
            a.q_proj.weight.copy_(pa.q_proj.weight)
            a.o_proj.weight.copy_(pa.o_proj.weight)
            for mine, theirs in ((a.k_proj, pa.k_proj), (a.v_proj, pa.v_proj)):
                heads_in = theirs.weight.shape[0] // pa.head_dim
                heads_out = mine.weight.shape[0] // a.head_dim
                w = theirs.weight.view(heads_out, heads_in // heads_out, pa.head_dim, -1).mean(1)
                mine.weight.copy_(w.reshape_as(mine.weight))
        elif isinstance(self.self_attn, _LinearAttention):
            v = pa.v_proj.weight.view(-1, pa.head_dim, pa.v_proj.weight.shape[1])
            v = v.repeat_interleave(pa.num_key_value_groups, dim=0).reshape(-1, v.shape[-1])
            self.self_attn.weight.copy_(pa.o_proj.weight @ v)
        if self.mlp is not None:
            k = self.mlp.gate_proj.weight.shape[0]
            self.mlp.gate_proj.weight.copy_(parent.mlp.gate_proj.weight[:k])
            self.mlp.up_proj.weight.copy_(parent.mlp.up_proj.weight[:k])
            self.mlp.down_proj.weight.copy_(parent.mlp.down_proj.weight[:, :k])


class _Candidate(nn.Module):
    """One replacement block: ``layers_per_block`` variant layers (+ the final norm on the last block)."""

    def __init__(self, layers: list[VariantLayer], norm: nn.Module | None):
        super().__init__()
        self.layers, self.norm = nn.ModuleList(layers), norm

    def forward(self, h: torch.Tensor, pe) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, pe)
        return self.norm(h) if self.norm is not None else h


class CandidateLibrary(nn.Module):
    """A student block: a library of candidate replacement blocks trained side by side against the
    same teacher block (module docstring). ``forward`` returns their outputs stacked on a new
    first dimension (``candidate_outputs``: the probe compares ``out[i]`` with the teacher's);
    :meth:`distill_loss` is the summed per-candidate loss."""

    candidate_outputs = True

    def __init__(self, names: list[str], candidates: list[_Candidate], rotary: nn.Module, *,
                 embed: nn.Module | None = None, head: nn.Module | None = None):
        super().__init__()
        self.names = list(names)
        self.candidates = nn.ModuleList(candidates)
        self.embed, self.head = embed, head  # frozen, shared with the teacher where both are built
        self.rotary = [rotary]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) if self.embed is not None else x
        pe = _positions(h, self.rotary[0])
        outs = [c(h, pe) for c in self.candidates]
        if self.head is not None:
            outs = [self.head(o) for o in outs]
        return torch.stack(outs)

    def distill_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum over candidates of the normalised MSE (KL on logits)."""
        if self.head is not None:
            logp_t = F.log_softmax(target, dim=-1)
            per = [F.kl_div(F.log_softmax(o, dim=-1).flatten(0, -2), logp_t.flatten(0, -2), log_target=True,
                            reduction="batchmean") for o in out]
            return torch.stack(per).sum()
        scale = target.pow(2).mean().clamp_min(1e-12)
        return (out - target.unsqueeze(0)).pow(2).mean(dim=tuple(range(1, out.dim()))).sum() / scale

    def candidate_losses(self, out: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Each candidate's loss (for reports; no gradient)."""
        with torch.no_grad():
            return {n: float(self.distill_loss(out[i:i + 1], target)) for i, n in enumerate(self.names)}


def _piece_seed(seed: int, piece: int) -> int:
    """The initialisation seed of one piece of the model (0: the embedding, 1 + i: decoder layer
    i, then the final norm): a pure function of (seed, piece), so a rank that builds only some
    pieces gives them the weights the full build gives them (splitmix-style odd multipliers)."""
    return (seed * 0x9E3779B97F4A7C15 + (piece + 1) * 0xBF58476D1CE4E5B9) % (2**63 - 1)


@torch.no_grad()
def _materialise(full: nn.Module, module: nn.Module, seed: int, piece: int) -> None:
    """Allocate ``module`` (built on the meta device inside ``full``) on the current default
    device and initialise it as ``transformers`` initialises a Llama (``full._init_weights``:
    normal(0, initializer_range) linear and embedding weights, unit norms), from its own seed."""
    module.to_empty(device=torch.get_default_device())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_piece_seed(seed, piece))
        for m in module.modules():
            full._init_weights(m)


def _build(arch: LlamaArch, options: WorkloadOptions, name: str, owned: BlockOwnership | None) -> Workload:
    """The teacher cut into blocks and a candidate library per block; with ``owned`` only those
    teacher and student blocks (plus the parent layers an owned student starts from, dropped
    after) are allocated: the whole ``LlamaForCausalLM`` is built on the meta device and each
    needed piece materialised from its own seed (:func:`_piece_seed`)."""
    k = options.layers_per_block
    if k < 1 or arch.layers % k:
        raise WorkloadError(f"{name}: --layers-per-block {k} must divide its {arch.layers} decoder layers")
    seq = options.seq_len or arch.seq
    if not 1 <= seq <= arch.max_positions:
        raise WorkloadError(f"{name}: --seq-len must be between 1 and {arch.max_positions}, got {seq}")
    if options.width_mult != 1.0:
        raise WorkloadError(f"{name}: --width-mult does not apply to decoder workloads (use --candidates)")
    blocks = arch.layers // k
    libraries = parse_candidates(options.candidates, blocks, arch)
    config = llama_config(arch)
    hf = _llama()
    with torch.device("meta"):
        full = hf.LlamaForCausalLM(config)
    rotary = hf.LlamaRotaryEmbedding(config=config)  # buffers computed from the config: always built
    teach = set(range(blocks)) if owned is None else set(owned.teacher)
    stud = set(range(blocks)) if owned is None else set(owned.student)
    parents, last = teach | stud, blocks - 1  # an owned student starts from its parent's layers
    head = full.lm_head if options.logits_kd else None
    if 0 in parents or (head is not None and last in parents):
        _materialise(full, full.model.embed_tokens, options.seed, 0)
    for b in sorted(parents):
        for j in range(b * k, (b + 1) * k):
            _materialise(full, full.model.layers[j], options.seed, 1 + j)
    if last in parents:
        _materialise(full, full.model.norm, options.seed, 1 + arch.layers)
    if head is not None and config.tie_word_embeddings:
        full.lm_head.weight = full.model.embed_tokens.weight
    elif head is not None and last in parents:
        _materialise(full, full.lm_head, options.seed, 2 + arch.layers)
    _load_teacher(full, options, name)
    embed, layers = full.model.embed_tokens, list(full.model.layers)
    teacher, student = [], []
    for b in range(blocks):
        first, is_last = b == 0, b == last
        own = layers[b * k:(b + 1) * k]
        teacher.append(TeacherBlock(own, rotary, embed=embed if first else None,
                                    norm=full.model.norm if is_last else None, head=head if is_last else None)
                       if b in teach else NotOwned("teacher", b))
        if b not in stud:
            student.append(NotOwned("student", b))
            continue
        candidates = []
        for c, cand in enumerate(libraries[b]):
            with torch.random.fork_rng(devices=[]):  # every value is overwritten by init_from: seeded anyway
                torch.manual_seed(_piece_seed(options.seed, 1000 * (b + 1) + c))
                vl = [VariantLayer(config, cand, b * k + j) for j in range(k)]
            for v, parent in zip(vl, own):
                v.init_from(parent)
            norm = copy.deepcopy(full.model.norm) if is_last else None
            candidates.append(_Candidate(vl, norm))
        student.append(CandidateLibrary(libraries[b], candidates, rotary, embed=embed if first else None,
                                        head=head if is_last else None))
    embed.requires_grad_(False)
    if head is not None:
        head.requires_grad_(False)
    return Workload(name=name, teacher=teacher, student=student, input_shape=(seq,), num_classes=arch.vocab,
                    default_dataset="tokens", options=options, input_dtype=torch.int64, tokens_per_sample=seq)


def _load_teacher(full: nn.Module, options: WorkloadOptions, name: str) -> None:
    """Load ``--teacher-weights`` (strict keys) into the pieces of ``full`` that are allocated; the
    ones left on the meta device (not owned by this rank) skip their tensors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*meta parameter.*no-op")  # the pieces not built here
        if options.teacher_weights == "smollm2":
            from ..smollm2 import state_dict, wrong_workload

            why = wrong_workload(name)
            if why:
                raise WorkloadError(why)
            full.load_state_dict(state_dict(), strict=True)
            return
        load_teacher_weights(full, options.teacher_weights, name)


@register_workload("llm-tiny", description="4 Llama decoder layers, hidden 128, vocab 512, seq 64 (tests)",
                   partial=True)
def llm_tiny(options: WorkloadOptions, owned: BlockOwnership | None = None) -> Workload:
    return _build(TINY, options, "llm-tiny", owned)


@register_workload("llm-smol", description="SmolLM2-135M architecture: 30 Llama decoder layers, hidden 576",
                   partial=True)
def llm_smol(options: WorkloadOptions, owned: BlockOwnership | None = None) -> Workload:
    return _build(SMOL, options, "llm-smol", owned)
