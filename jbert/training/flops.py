"""FLOP counts for throughput and MFU: training FLOPs per token, peak FLOP/s per device."""

from __future__ import annotations

import jax

from jbert.model.config import JinaBertConfig

# Dense bf16 peak FLOP/s per device, for MFU, keyed by (a part of) the `device_kind` the devices
# report: "TPU v4", "TPU v5 lite" (v5e), "TPU v5" (v5p), "TPU v6 lite" (v6e), "NVIDIA H100 80GB
# HBM3"... The longest key contained in the kind wins ("TPU v5 lite" over "TPU v5"). Unknown
# kinds (CPUs) report no MFU.
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5": 459e12,
    "TPU v5p": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "H100": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "H800": 989e12,
    "A100": 312e12, "L4": 121e12,
}


def peak_flops_for_kind(kind: str) -> float | None:
    """The dense bf16 peak of a device kind, or None when no key is part of it."""
    matches = [key for key in PEAK_FLOPS if key.lower() in kind.lower()]
    return PEAK_FLOPS[max(matches, key=len)] if matches else None


def peak_flops_per_device(override: float | None = None) -> float | None:
    if override:
        return override
    return peak_flops_for_kind(jax.devices()[0].device_kind)


def encoder_flops_per_token(config: JinaBertConfig, seq_len: int, decoder_rows: int = 0,
                            decoder_fraction: float = 1.0) -> float:
    """Training FLOPs per token: 6 x matmul parameters + attention in full (12 x layers x L x D).

    `decoder_rows` is the output vocabulary of the MLM head (0 when only the encoder runs),
    projected at `decoder_fraction` of the positions.
    """
    d, f, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    mlp = 3 * d * f if config.feed_forward_type.endswith("glu") else 2 * d * f
    encoder = n * (4 * d * d + mlp)
    head = decoder_fraction * (decoder_rows * d + d * d) if decoder_rows else 0.0
    return 6.0 * (encoder + head) + 12.0 * n * seq_len * d
