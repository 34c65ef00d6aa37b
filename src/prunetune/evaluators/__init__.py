"""Evaluators: what a configuration costs and how good a pruned model is."""

from __future__ import annotations

from ._accuracy import AccuracyResult, evaluate_accuracy
from ._cost import (
    BLOCK_TABLE_HEADER,
    BlockCost,
    Cost,
    block_table,
    count_params,
    estimate_cost,
    format_macs,
    measure_macs,
)
from ._finetune import TeacherCache, distillation_loss, finetune
from ._latency import LatencyResult, measure_latency
from ._latency_table import LatencyTable
from ._proxies import (
    ProxyContext,
    ShortKDProxy,
    ZeroShotProxy,
    get_proxy,
    list_proxies,
    register_proxy,
)
from ._tiers import TierResult, Tiers, gate_passes, tier_label

__all__ = [
    "AccuracyResult",
    "BLOCK_TABLE_HEADER",
    "block_table",
    "BlockCost",
    "Cost",
    "LatencyResult",
    "LatencyTable",
    "ProxyContext",
    "TierResult",
    "Tiers",
    "gate_passes",
    "tier_label",
    "ShortKDProxy",
    "TeacherCache",
    "ZeroShotProxy",
    "count_params",
    "get_proxy",
    "list_proxies",
    "register_proxy",
    "distillation_loss",
    "finetune",
    "estimate_cost",
    "evaluate_accuracy",
    "format_macs",
    "measure_latency",
    "measure_macs",
]
