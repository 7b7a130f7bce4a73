"""The shape metrics' names, inputs and valid configurations (DESIGN §5.1), without the engine: configs and the
command line check a metric configuration here without importing PyTorch."""

from __future__ import annotations

from typing import Literal, get_args

from survey.errors import SurveyError

Metric = Literal["linear", "permutation", "cka", "stochastic", "conv"]
Score = Literal["angular", "euclidean"]
METRICS: tuple[str, ...] = get_args(Metric)
SCORES: tuple[str, ...] = get_args(Score)
# a configuration's defaults, for the engine, `pairwise` and the config alike
DEFAULT_METRIC: Metric = "linear"
DEFAULT_ALPHA = 1.0
DEFAULT_SCORE: Score = "angular"
DEFAULT_CENTER = True
INPUT_NDIM = {"linear": 2, "permutation": 2, "cka": 2, "stochastic": 3, "conv": 4}
INPUT_LAYOUT = {
    "linear": "stimuli × units", "permutation": "stimuli × units", "cka": "stimuli × units",
    "stochastic": "stimuli × repeats × units", "conv": "stimuli × channels × height × width",
}


def check_configuration(metric: str, alpha: float, score: str) -> None:
    """One clear SurveyError for a metric configuration the engine cannot compute: alpha whitens the linear and
    conv metrics (0 = CCA … 1 = Procrustes) and mixes means and covariances of the stochastic one (0 … 2)."""
    if metric not in METRICS:
        raise SurveyError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    if score not in SCORES:
        raise SurveyError(f"unknown score {score!r}; use angular or euclidean")
    top = 2.0 if metric == "stochastic" else 1.0
    if not 0.0 <= alpha <= top:
        raise SurveyError(f"alpha={alpha} is outside [0, {top:g}] for the {metric} metric; pick alpha in range")
    if metric in ("permutation", "cka") and alpha != 1.0:
        raise SurveyError(f"the {metric} metric has no alpha; leave alpha at 1")
