"""
Reading and summarising ``level_statistics.json`` (written by
``hpf.engine.hooks.RecordLevelStatistics``, see :mod:`hpf.analysis.level_statistics`): the
proportion of positives on each pyramid level (the HPF paper's level discrepancy, §3.2 and
Fig. 3) and the share of the classification gradient that hard and easy entries contribute (its
gradient drift, §3.1 and Fig. 2). No plotting here: ``tools/analysis/level_discrepancy.py`` and
``tools/analysis/gradient_drift.py`` draw what these functions return.

A record is one line of the file, one recorded iteration::

    {"iteration": 12, "threshold": 0.6931, "world_size": 1, "levels": ["p3", ..., "p7"],
     "anchors": [per level], "positives": [per level],
     "count": {"pos_hard": [per level], "pos_easy": [...], "neg_hard": [...], "neg_easy": [...]},
     "loss": {the same four keys}, "grad": {the same four keys}}
"""
import json
import logging
import math
import os
from typing import Dict, List, NamedTuple, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "FILE_NAME", "read_json_lines", "read_level_statistics", "level_names",
    "LevelProportions", "positive_proportions", "wasserstein_distance", "gradient_shares",
    "summarize_proportions",
]

logger = logging.getLogger(__name__)

FILE_NAME = "level_statistics.json"
_REQUIRED = ("iteration", "levels", "positives", "count", "loss", "grad")
_SAMPLES = {"all": ("pos", "neg"), "positive": ("pos",), "negative": ("neg",)}


def read_json_lines(path: str) -> List[dict]:
    """
    The JSON objects of a JSON-lines file (detectron2's ``metrics.json``,
    ``level_statistics.json``), in file order.

    A line that does not parse is skipped with a warning: the last line of a run killed while
    writing it, or such a line with the first line of the resumed run appended to it (both
    writers append).

    Args:
        path (str): the file.

    Returns:
        list[dict]: one dict per parsed line (lines that are not JSON objects are skipped too).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found")
    records, bad = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad.append(number)
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                bad.append(number)
    if bad:
        logger.warning(f"{path}: skipped {len(bad)} line(s) that are not JSON objects "
                       f"(line {', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''}; "
                       "a partial last line of a killed run)")
    return records


def read_level_statistics(path: str) -> List[dict]:
    """
    The records of a ``level_statistics.json``, one per recorded iteration, sorted by
    iteration; where an iteration appears twice (a resumed run), the later line is kept.

    Args:
        path (str): the file (a ``.json``), or a training output directory that holds it.

    Returns:
        list[dict]: the records (see the module's docstring).
    """
    if os.path.isdir(path) or not path.endswith(".json"):
        path = os.path.join(path, FILE_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: train with train.level_statistics.enabled=True to record it "
            "(dense detectors: RetinaNet, FCOS, ATSS)"
        )
    by_iteration = {}
    for record in read_json_lines(path):
        missing = [k for k in _REQUIRED if k not in record]
        if missing:
            raise ValueError(f"{path}: the record of iteration {record.get('iteration')} lacks "
                             f"{missing}; is it a level_statistics.json?")
        by_iteration[int(record["iteration"])] = record
    if not by_iteration:
        raise ValueError(f"{path} has no complete record")
    levels = [r["levels"] for r in by_iteration.values()]
    if any(names != levels[0] for names in levels):
        raise ValueError(f"{path}: the records name different levels")
    return [by_iteration[i] for i in sorted(by_iteration)]


def level_names(records: Sequence[dict]) -> List[str]:
    """The records' level names as the papers write them: ``["P3", ..., "P7"]``."""
    return [str(name).upper() for name in records[0]["levels"]]


class LevelProportions(NamedTuple):
    """What :func:`positive_proportions` returns."""

    values: np.ndarray  # [N, L]: the proportion of the iteration's positives on each level
    iterations: np.ndarray  # [N]: the iterations of the rows
    skipped: int  # records left out because they have no positive


def positive_proportions(records: Sequence[dict]) -> LevelProportions:
    """
    The proportion of positive anchors on each pyramid level, per recorded iteration:
    ``positives[l] / sum over levels of positives`` (the HPF paper's Fig. 3, second row, where
    the spread of these proportions across iterations is the level discrepancy of §3.2).

    Args:
        records: records of :func:`read_level_statistics`.

    Returns:
        LevelProportions: ``values`` ``[N, L]`` (rows sum to 1), their ``iterations``, and the
        number of records ``skipped`` because their batch had no positive.
    """
    num_levels = len(records[0]["levels"]) if records else 0
    positives = np.array([r["positives"] for r in records], dtype=np.float64).reshape(
        len(records), num_levels
    )
    iterations = np.array([r["iteration"] for r in records], dtype=np.int64)
    total = positives.sum(axis=1)
    keep = total > 0
    values = positives[keep] / total[keep, None]
    return LevelProportions(values, iterations[keep], int((~keep).sum()))


def wasserstein_distance(u: Sequence[float], v: Sequence[float]) -> float:
    """
    The 1-D Wasserstein (earth mover's) distance between the empirical distributions of two
    samples, of possibly different sizes: the integral of ``|F_u(x) - F_v(x)|`` over ``x``,
    where ``F`` are the empirical CDFs (the D_was of the HPF paper's Fig. 3; equal to
    ``scipy.stats.wasserstein_distance`` without weights).

    Both CDFs are step functions that change only at the samples' values, so the integral is a
    sum over the intervals between consecutive values of the merged, sorted samples.

    Args:
        u, v: the two samples (non-empty, finite).

    Returns:
        float: the distance, in the unit of the samples.
    """
    u = np.sort(np.asarray(u, dtype=np.float64).ravel())
    v = np.sort(np.asarray(v, dtype=np.float64).ravel())
    if u.size == 0 or v.size == 0:
        raise ValueError("wasserstein_distance needs two non-empty samples")
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        raise ValueError("wasserstein_distance needs finite samples")
    merged = np.sort(np.concatenate([u, v]))
    widths = np.diff(merged)
    # On [merged[i], merged[i+1]) F_u is the fraction of u that is <= merged[i].
    cdf_u = np.searchsorted(u, merged[:-1], side="right") / u.size
    cdf_v = np.searchsorted(v, merged[:-1], side="right") / v.size
    return float(np.sum(np.abs(cdf_u - cdf_v) * widths))


def _category_sum(record, quantity, category, levels):
    per_level = record[quantity][category]
    if levels is None:
        return float(sum(per_level))
    return float(sum(per_level[i] for i in levels))


def gradient_shares(
    records: Union[dict, Sequence[dict]],
    samples: str = "all",
    quantity: str = "grad",
    levels: Union[None, Sequence[int]] = None,
) -> Union[Tuple[float, float], Tuple[np.ndarray, np.ndarray]]:
    """
    The shares of the classification gradient that hard and easy entries contribute: hard
    share = sum of ``|d loss / d logit|`` over hard entries / the sum over all entries (the
    gradient drift of the HPF paper, §3.1 and Fig. 2: as training goes on, the easy entries,
    many and each with a small gradient, take a growing share of it).

    Args:
        records (dict or list[dict]): one record or several of :func:`read_level_statistics`.
        samples (str): "all" (positive and negative entries), "positive" or "negative".
        quantity (str): "grad" (gradient), "loss" or "count": the same shares of the summed
            cross-entropy or of the number of entries.
        levels (list[int] or None): indices of the levels to sum over; None: all levels.

    Returns:
        (hard, easy): floats for one record, ``[N]`` arrays for a list. They sum to 1, or are
        both NaN where the selected entries have no gradient at all (e.g. "positive" in a batch
        without positives).
    """
    if samples not in _SAMPLES:
        raise ValueError(f"samples must be one of {sorted(_SAMPLES)}, got {samples!r}")
    if quantity not in ("grad", "loss", "count"):
        raise ValueError(f"quantity must be 'grad', 'loss' or 'count', got {quantity!r}")
    single = isinstance(records, dict)
    hard, easy = [], []
    for record in [records] if single else records:
        h = sum(_category_sum(record, quantity, f"{s}_hard", levels) for s in _SAMPLES[samples])
        e = sum(_category_sum(record, quantity, f"{s}_easy", levels) for s in _SAMPLES[samples])
        total = h + e
        hard.append(h / total if total > 0 else math.nan)
        easy.append(e / total if total > 0 else math.nan)
    if single:
        return hard[0], easy[0]
    return np.array(hard, dtype=np.float64), np.array(easy, dtype=np.float64)


def summarize_proportions(proportions: np.ndarray, best: int) -> Dict[str, np.ndarray]:
    """
    Per level: the mean and standard deviation of the per-iteration proportions, and D_was, the
    Wasserstein distance between the best level's distribution and the level's (0 for the best
    level itself).

    Args:
        proportions (ndarray): ``[N, L]``, the ``values`` of :func:`positive_proportions`.
        best (int): the index of the best level.

    Returns:
        dict: "mean", "std", "d_was", each ``[L]``.
    """
    if len(proportions) == 0:
        raise ValueError("no iteration with positives to summarise")
    columns = proportions.T
    return {
        "mean": proportions.mean(axis=0),
        "std": proportions.std(axis=0),
        "d_was": np.array([wasserstein_distance(columns[best], c) for c in columns]),
    }

