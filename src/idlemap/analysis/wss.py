"""Working-set summaries over a series of windows."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..records import MappingUsage, WssSample


@dataclass(frozen=True)
class WssSummary:
    samples: int
    ref_min_bytes: int
    ref_mean_bytes: float
    ref_max_bytes: int
    ref_p50_bytes: float
    ref_p95_bytes: float
    rss_last_bytes: int
    window_mean_s: float


def summarize(samples: list[WssSample]) -> WssSummary | None:
    if not samples:
        return None
    ref = np.array([s.accessed_bytes for s in samples], dtype=np.float64)
    return WssSummary(
        samples=len(samples),
        ref_min_bytes=int(ref.min()), ref_mean_bytes=float(ref.mean()), ref_max_bytes=int(ref.max()),
        ref_p50_bytes=float(np.percentile(ref, 50)), ref_p95_bytes=float(np.percentile(ref, 95)),
        rss_last_bytes=samples[-1].rss_bytes,
        window_mean_s=float(np.mean([s.window_s for s in samples])))


def top_mappings(usages: list[MappingUsage], n: int = 10, key: str = "rss_bytes") -> list[MappingUsage]:
    """The n mappings with the most ``key``; the rest folded into one row."""
    ordered = sorted(usages, key=lambda u: getattr(u, key), reverse=True)
    return ordered[:n]


def profile_windows(base_s: float, steps: int) -> list[float]:
    """Gregg's -P: window ends at base, 2*base, 4*base, ... (power of two)."""
    return [base_s * (1 << k) for k in range(steps)]
