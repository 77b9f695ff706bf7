"""LoRA: low-rank updates of the attention projections and feed-forward kernels.

A targeted kernel `W` [N, I, O] (N layers, under scan) is used as `W + scale * A @ B` with
`A` [N, I, R] and `B` [N, R, O], R the rank and scale = alpha / R. `B` starts at zero, so an
adapted model starts as its base. What is trained ("trainable") is a plain dict:
`{"lora": {target: {"a": A, "b": B}}, **head}` where `head` is the head's own weights outside
the encoder (the contrastive temperature, the MLM transform), which are small and stay trained;
the encoder's weights are the frozen base. `merge` gives plain params in the base's layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jbert.model import functional
from jbert.model.config import JinaBertConfig

Params = dict[str, Any]

# Target name -> where its kernel sits under `encoder.layer`, one path per layout (the
# original MLP, the gated one, the code model's); a model has exactly one of each.
TARGETS: dict[str, tuple[tuple[str, ...], ...]] = {
    "query": (("attention", "self_attn", "query"),),
    "key": (("attention", "self_attn", "key"),),
    "value": (("attention", "self_attn", "value"),),
    "attention_output": (("attention", "output", "dense"),),
    "mlp_in": (("intermediate", "dense"), ("mlp", "gated_layers"), ("mlp", "up_gated_layer")),
    "mlp_out": (("output", "dense"), ("mlp", "wo"), ("mlp", "down_layer")),
}
RANK_AXIS = "lora_rank"  # logical name of the rank dimension (replicated: it is small)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters on the `targets` (see `TARGETS`); rank 0 trains every weight."""

    rank: int = 0
    alpha: float = 16.0
    targets: tuple[str, ...] = tuple(TARGETS)

    def __post_init__(self) -> None:
        if self.rank < 0:
            raise ValueError(f"lora.rank={self.rank}: must be >= 0 (0: no adapters)")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha={self.alpha}: must be > 0")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"lora.targets={','.join(self.targets)!r}: "
                             f"{'unknown ' + ', '.join(unknown) if unknown else 'empty'}; "
                             f"known: {', '.join(TARGETS)}")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"lora.targets={','.join(self.targets)!r}: a target is listed twice")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _layer(encoder: Params) -> Params:
    return encoder["encoder"]["layer"]


def kernel_path(encoder: Params, target: str) -> tuple[str, ...]:
    """The target's module path under `encoder.layer` in this model's layout."""
    layer = _layer(encoder)
    for path in TARGETS[target]:
        node = layer
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and "kernel" in node:
            return path
    raise KeyError(f"lora target {target!r}: no {' or '.join('.'.join(p) for p in TARGETS[target])}"
                   " in this model")


def _get(tree: Params, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _replace(tree: Params, path: tuple[str, ...], value: Any) -> Params:
    """A copy of `tree` with the leaf at `path` replaced (the dicts along it copied)."""
    if not path:
        return value
    return {**tree, path[0]: _replace(tree[path[0]], path[1:], value)}


def _encoder_path(params: Params) -> tuple[str, ...]:
    return ("bert",) if functional.encoder_params(params) is not params else ()


def _head_weights(params: Params) -> Params:
    """The head's own weights, outside the encoder (none for a bare encoder)."""
    return {k: v for k, v in params.items() if k != "bert"} if _encoder_path(params) else {}


def _adapter_shapes(encoder: Params, target: str, rank: int) -> tuple[tuple[int, ...],
                                                                      tuple[int, ...], Any]:
    """(A's shape, B's shape, dtype) for the target's kernel [N, I, O]."""
    kernel_NIO = _get(_layer(encoder), kernel_path(encoder, target))["kernel"]
    n, i, o = kernel_NIO.shape
    return (n, i, rank), (n, rank, o), kernel_NIO.dtype


def abstract_trainable(config: JinaBertConfig, head: str, cfg: LoRAConfig) -> Params:
    """ShapeDtypeStructs of the trainable tree (adapters and head weights)."""
    full = functional.abstract_params(config, head)
    adapters = {}
    for target in cfg.targets:
        shape_a, shape_b, dtype = _adapter_shapes(functional.encoder_params(full), target,
                                                  cfg.rank)
        adapters[target] = {"a": jax.ShapeDtypeStruct(shape_a, dtype),
                            "b": jax.ShapeDtypeStruct(shape_b, dtype)}
    return trainable(full, adapters)


def trainable_axes(config: JinaBertConfig, head: str, cfg: LoRAConfig) -> Params:
    """Logical axis names of the trainable tree: A's input and B's output dimension follow
    the kernel's (so they shard like it), the rank dimension is `lora_rank`."""
    full, axes = functional.abstract_params(config, head), functional.logical_axes(config, head)
    encoder, encoder_axes = functional.encoder_params(full), functional.encoder_params(axes)
    adapters = {}
    for target in cfg.targets:
        layers, axis_in, axis_out = _get(_layer(encoder_axes), kernel_path(encoder, target))[
            "kernel"]
        adapters[target] = {"a": (layers, axis_in, RANK_AXIS), "b": (layers, RANK_AXIS, axis_out)}
    return {"lora": adapters, **_head_weights(axes)}


def init_adapters(full: Params, cfg: LoRAConfig, rng: jax.Array) -> Params:
    """Fresh adapters for the kernels of `full` (params or their shapes): A ~ N(0, 1/I), B = 0,
    so the adapted model starts as the base."""
    encoder = functional.encoder_params(full)
    adapters = {}
    for target, key in zip(cfg.targets, jax.random.split(rng, len(cfg.targets)), strict=True):
        shape_a, shape_b, dtype = _adapter_shapes(encoder, target, cfg.rank)
        a_NIR = jax.random.normal(key, shape_a, jnp.float32) / jnp.sqrt(shape_a[1])
        adapters[target] = {"a": a_NIR.astype(dtype), "b": jnp.zeros(shape_b, dtype)}
    return adapters


def trainable(base: Params, adapters: Params) -> Params:
    """The trainable tree of a run: the adapters and the base's head weights."""
    return {"lora": adapters, **_head_weights(base)}


def merge(base: Params, trained: Params, cfg: LoRAConfig) -> Params:
    """Plain params in the base's layout: each targeted kernel plus scale * A @ B (per layer),
    the head weights from `trained`; differentiable in `trained`."""
    prefix = _encoder_path(base)
    encoder = functional.encoder_params(base)
    layer = _layer(encoder)
    for target, adapter in trained["lora"].items():
        path = kernel_path(encoder, target) + ("kernel",)
        kernel_NIO = _get(layer, path)
        delta_NIO = jnp.einsum("nir,nro->nio", adapter["a"], adapter["b"],
                               preferred_element_type=jnp.float32)
        layer = _replace(layer, path, (kernel_NIO + cfg.scale * delta_NIO).astype(
            kernel_NIO.dtype))
    merged = _replace(base, prefix + ("encoder", "layer"), layer)
    return {**merged, **{k: v for k, v in trained.items() if k != "lora"}}


def on_merged(loss_fn: Callable, base: Params, cfg: LoRAConfig) -> Callable:
    """`loss_fn(params, ...)` as a function of the trainable tree."""
    def loss(trained: Params, *args: Any) -> Any:
        return loss_fn(merge(base, trained, cfg), *args)

    return loss


def grad_on_merged(grad_fn: Callable, base: Params, cfg: LoRAConfig) -> Callable:
    """A gradient function of plain params (`(params, batch, rng) -> (grads, sums)`, such as
    the contrastive GradCache step) turned into one of the trainable tree: the plain gradient
    pulled back through `merge` (dA = scale * dW B^T, dB = scale * A^T dW)."""
    def grad(trained: Params, *args: Any) -> tuple[Params, Any]:
        merged, pull_back = jax.vjp(lambda t: merge(base, t, cfg), trained)
        grads, sums = grad_fn(merged, *args)
        return pull_back(grads)[0], sums

    return grad
