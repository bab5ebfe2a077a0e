"""Time hashing.metrics on random codes: 10,000 queries x 70,000 database, 10 classes, 32/64 bits.

Usage: python benchmarks/metrics_speed.py [n_queries] [n_database]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from hashing.metrics import mean_average_precision, retrieval_report


def main(n_queries: int = 10_000, n_db: int = 70_000) -> None:
    rng = np.random.default_rng(0)
    query_labels, db_labels = rng.integers(0, 10, n_queries), rng.integers(0, 10, n_db)
    for bits in (32, 64):
        query_codes = rng.integers(0, 256, (n_queries, bits // 8), dtype=np.uint8)
        db_codes = rng.integers(0, 256, (n_db, bits // 8), dtype=np.uint8)
        args = (query_codes, db_codes, query_labels, db_labels)
        timings = {
            "map_tie_aware@all": lambda args=args: mean_average_precision(*args),
            "map_tie_aware@1000": lambda args=args: mean_average_precision(*args, topk=1000),
            "map_id_order@all": lambda args=args: mean_average_precision(*args, ties="id"),
            "retrieval_report": lambda args=args: retrieval_report(*args),
        }
        for name, run in timings.items():
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            print(f"{n_queries} x {n_db} {bits:>2} bits  {name:<20} {seconds:6.2f} s")


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
