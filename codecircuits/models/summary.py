"""A model summary: the numbers a researcher checks before running a method on a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelSummary:
    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    kv_groups: tuple[tuple[int, ...], ...]  # kv_groups[g] = the query heads that share key/value head g
    d_model: int
    d_head: int
    d_mlp: int
    gated_mlp: bool
    act_fn: str
    normalization: str
    parallel_attn_mlp: bool
    d_vocab: int
    n_ctx: int
    n_params: int

    @property
    def attention_kind(self) -> str:
        if self.n_kv_heads == self.n_heads:
            return "multi-head"
        return "multi-query" if self.n_kv_heads == 1 else "grouped-query"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention_kind"] = self.attention_kind
        return d

    def __str__(self) -> str:
        groups = "; ".join(f"kv{g}: q{','.join(map(str, hs))}" for g, hs in enumerate(self.kv_groups))
        mlp = "gated" if self.gated_mlp else "plain"
        return "\n".join(
            [
                f"{self.name} ({self.architecture}), {self.n_params / 1e6:.1f}M parameters",
                f"  layers {self.n_layers}, d_model {self.d_model}, d_head {self.d_head}, context {self.n_ctx}",
                f"  attention: {self.n_heads} query heads, {self.n_kv_heads} key/value heads ({self.attention_kind})",
                f"  head groups: {groups}",
                f"  MLP: {mlp} {self.act_fn}, d_mlp {self.d_mlp}"
                + ("; attention and MLP in parallel" if self.parallel_attn_mlp else ""),
                f"  norm: {self.normalization}, vocabulary {self.d_vocab}",
            ]
        )


def n_kv_heads(model) -> int:
    """Number of key/value heads (equal to the query heads for multi-head attention)."""
    return int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)


def kv_head_of(model) -> list[int]:
    """For each query head, the key/value head it reads (Hugging Face's ``repeat_kv`` convention)."""
    n_heads, n_kv = model.cfg.n_heads, n_kv_heads(model)
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads do not divide into {n_kv} key/value heads")
    per = n_heads // n_kv
    return [h // per for h in range(n_heads)]


def kv_groups(model) -> tuple[tuple[int, ...], ...]:
    owner = kv_head_of(model)
    return tuple(tuple(h for h, g in enumerate(owner) if g == kv) for kv in range(n_kv_heads(model)))


def describe(model) -> ModelSummary:
    """Summarise a hooked model: layers, heads and key/value groups, MLP kind, norm, vocabulary, context."""
    cfg = model.cfg
    norm = str(getattr(cfg, "normalization_type", None) or "none")
    norm = {"RMS": "RMSNorm", "RMSPre": "RMSNorm (folded)", "LN": "LayerNorm", "LNPre": "LayerNorm (folded)"}.get(
        norm, norm
    )
    arch = getattr(cfg, "original_architecture", None) or type(getattr(model, "original_model", model)).__name__
    return ModelSummary(name=str(getattr(cfg, "model_name", "") or arch), architecture=str(arch),
                        n_layers=int(cfg.n_layers), n_heads=int(cfg.n_heads), n_kv_heads=n_kv_heads(model),
                        kv_groups=kv_groups(model), d_model=int(cfg.d_model), d_head=int(cfg.d_head),
                        d_mlp=int(cfg.d_mlp), gated_mlp=bool(getattr(cfg, "gated_mlp", False)),
                        act_fn=str(getattr(cfg, "act_fn", "")), normalization=norm,
                        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)), d_vocab=int(cfg.d_vocab),
                        n_ctx=int(cfg.n_ctx),
                        n_params=sum(p.numel() for p in getattr(model, "original_model", model).parameters()))
