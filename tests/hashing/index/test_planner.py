"""What ``strategy="auto"`` plans: a scan for uniform codes, MIH or buckets for clustered ones."""

from __future__ import annotations

import numpy as np
import pytest
from index_reference import (
    clustered_codes,
    fill,
    random_codes,
)


def test_auto_scans_uniform_codes_and_probes_clustered_ones():
    rng = np.random.default_rng(1)
    uniform = fill(random_codes(rng, 20_000, 64), np.arange(20_000), 64, "faiss", "auto")
    # top-k on uniform codes needs a wide radius: too many probes; a small radius needs few
    assert uniform.plan(k=10) == ["flat"]
    assert uniform.plan(k=1000) == ["flat"]
    assert uniform.plan(radius=2) == ["mih"]
    clustered = fill(
        clustered_codes(rng, 20_000, 64, centres=50), np.arange(20_000), 64, "faiss", "auto"
    )
    assert clustered.plan(k=100) in (["mih"], ["buckets"])  # grouped by code, not flat
    forced = fill(random_codes(rng, 100, 64), np.arange(100), 64, "faiss", "buckets")
    assert forced.plan(k=10) == forced.plan(radius=1) == ["buckets"]
    with pytest.raises(ValueError, match="exactly one"):
        forced.plan(k=1, radius=1)


def test_auto_scans_for_a_large_top_k_when_faiss_hands_back_only_k_codes():
    # 1M uniform 32-bit codes: the flat scan's faiss top-1000 fetches 1000 codes (not a margin
    # of 2k + 16), which makes it cheaper than probing; a top-10 still probes
    rng = np.random.default_rng(3)
    n = 1_000_000
    uniform = fill(random_codes(rng, n, 32), np.arange(n), 32, "faiss", "auto")
    assert uniform.plan(k=1000) == ["flat"]
    assert uniform.plan(k=10) == ["mih"]
