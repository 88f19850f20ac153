"""Optimal one-to-one matching of list items by score (SciPy's linear_sum_assignment, else the Hungarian algorithm)."""

from __future__ import annotations

import math

__all__ = ["assign", "hungarian_max"]


def hungarian_max(scores: list[list[float]]) -> list[tuple[int, int]]:
    """Pairs (row, col) maximizing the summed score (pure Python, O(n²m)); len = min(rows, cols)."""
    n = len(scores)
    m = len(scores[0]) if n else 0
    if n == 0 or m == 0:
        return []
    if n > m:
        return sorted((i, j) for j, i in hungarian_max([list(col) for col in zip(*scores, strict=True)]))
    inf = math.inf
    u = [0.0] * (n + 1)
    v = [0.0] * (m + 1)
    owner = [0] * (m + 1)  # owner[j]: the row (1-based) assigned to column j, 0 = none
    way = [0] * (m + 1)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        minv = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0 = owner[j0]
            delta = inf
            j1 = 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = -scores[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < minv[j]:
                        minv[j] = cur
                        way[j] = j0
                    if minv[j] < delta:
                        delta = minv[j]
                        j1 = j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    minv[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    return sorted((owner[j] - 1, j - 1) for j in range(1, m + 1) if owner[j])


def assign(scores: list[list[float]]) -> list[tuple[int, int]]:
    if not scores or not scores[0]:
        return []
    if len(scores) == 1 or len(scores[0]) == 1:  # trivial: take the best single pair
        flat = [(s, i, j) for i, row in enumerate(scores) for j, s in enumerate(row)]
        best = max(flat, key=lambda t: t[0])
        return [(best[1], best[2])]
    try:
        import numpy as np
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        return hungarian_max(scores)
    rows, cols = linear_sum_assignment(np.asarray(scores, dtype=float), maximize=True)
    return [(int(i), int(j)) for i, j in zip(rows, cols, strict=True)]
