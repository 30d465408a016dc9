"""Hugging Face key/value caches through the bridge, on every transformers release we support.

transformers 5.24 renamed the cache argument of its attention and decoder layers from ``past_key_values`` to
``cache`` (the old name is deprecated until 5.40). A decoder layer of 5.24 hands the cache to its attention
as ``cache=``, but TransformerLens 4.3's attention bridges (``AttentionBridge._update_kv_cache``) read only
``past_key_values`` (or ``layer_past``): the cache is silently never filled, so prefix reuse, and TL's own
cached generation, would attend to the new positions alone. :func:`forward_cache_to_attention` passes the
cache on under the name the bridge reads. On releases before 5.24 nothing is ever renamed and the hooks are
no-ops.
"""

from __future__ import annotations

_FLAG = "_codecircuits_cache_kwarg_hooks"


def _rename_cache(module, args, kwargs):
    if kwargs.get("cache") is not None and kwargs.get("past_key_values") is None:
        kwargs = dict(kwargs)
        kwargs["past_key_values"] = kwargs.pop("cache")
        return args, kwargs
    return None


def forward_cache_to_attention(model) -> None:
    """Make every attention bridge of ``model`` see a cache passed as ``cache=`` (transformers >= 5.24).

    Idempotent; installed by :func:`codecircuits.load_model` and by the sweeps' receiver, so that a bridge
    booted by hand gets it too.
    """
    if getattr(model, _FLAG, None) is not None:
        return
    handles = []
    for block in getattr(model, "blocks", []):
        attn = getattr(block, "attn", None)
        if attn is not None:
            handles.append(attn.register_forward_pre_hook(_rename_cache, with_kwargs=True))
    object.__setattr__(model, _FLAG, handles)
