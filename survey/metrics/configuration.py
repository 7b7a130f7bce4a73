"""The shape metrics as configs and the catalog know them (DESIGN §5.1): each one's name, the array it compares, its
alpha, and where its math lives. Plain records without PyTorch: configs and the command line check a metric
configuration here, and a metric's engine is imported only when a distance is computed.

Adding a metric takes one module with its `survey.metrics.shape.ShapeFamily` subclass (as `survey.metrics.shapes`
holds the five below) and one `register` line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from survey.errors import SurveyError

Score = Literal["angular", "euclidean"]
SCORES: tuple[str, ...] = get_args(Score)
# a configuration's defaults, for the engine, `pairwise` and the config alike
DEFAULT_METRIC = "linear"
DEFAULT_ALPHA = 1.0
DEFAULT_SCORE: Score = "angular"
DEFAULT_CENTER = True


@dataclass(frozen=True)
class MetricKind:
    """One shape metric: `engine` names its ShapeFamily subclass (``module:Class``); `input_layout` the axes of the
    array it compares; `array_column` the `representations` column that stores that array; `alpha_range` its alpha
    (None: it has none, alpha stays 1); `maps`: it compares spatial maps, average-pooled to `conv_size` positions a
    side (its units of work and spaces carry the pooling size)."""

    name: str
    engine: str
    input_layout: str = "stimuli × units"
    array_column: str = "array_uri"
    alpha_range: tuple[float, float] | None = (0.0, 1.0)
    maps: bool = False

    @property
    def input_ndim(self) -> int:
        return self.input_layout.count("×") + 1


METRIC_KINDS: dict[str, MetricKind] = {}


def register(kind: MetricKind) -> MetricKind:
    """Make `kind` a metric configs, stages, spaces and the search service accept."""
    METRIC_KINDS[kind.name] = kind
    return kind


def metric_kind(name: str) -> MetricKind:
    """The registered metric `name`; one clear SurveyError for an unknown one."""
    if name not in METRIC_KINDS:
        raise SurveyError(f"unknown metric {name!r}; use one of {', '.join(METRIC_KINDS)}")
    return METRIC_KINDS[name]


register(MetricKind("linear", "survey.metrics.shapes.linear:LinearMetric"))  # alpha: 0 = CCA … 1 = Procrustes
register(MetricKind("permutation", "survey.metrics.shapes.permutation:PermutationMetric", alpha_range=None))
register(MetricKind("cka", "survey.metrics.shapes.cka:AngularCKA", alpha_range=None))
register(MetricKind("stochastic", "survey.metrics.shapes.stochastic:StochasticMetric", "stimuli × repeats × units",
                    "repeats_uri", (0.0, 2.0)))  # alpha: 0 = means only … 2 = covariances only
register(MetricKind("conv", "survey.metrics.shapes.conv:ConvMetric", "stimuli × channels × height × width",
                    "spatial_uri", maps=True))


def check_configuration(metric: str, alpha: float, score: str) -> None:
    """One clear SurveyError for a metric configuration the engine cannot compute."""
    kind = metric_kind(metric)
    if score not in SCORES:
        raise SurveyError(f"unknown score {score!r}; use angular or euclidean")
    if kind.alpha_range is None:
        if alpha != 1.0:
            raise SurveyError(f"the {metric} metric has no alpha; leave alpha at 1")
    elif not kind.alpha_range[0] <= alpha <= kind.alpha_range[1]:
        low, high = kind.alpha_range
        raise SurveyError(f"alpha={alpha} is outside [{low:g}, {high:g}] for the {metric} metric; pick alpha in range")
