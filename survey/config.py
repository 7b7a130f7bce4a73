"""Survey configuration (pydantic): what to survey, where, and with which executor."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from survey.errors import SurveyError, one_line
from survey.mei.defaults import (
    EGG_ENERGY_SCALE,
    EGG_STEPS,
    GA_BLUR_SIGMA,
    GA_LR,
    GA_STEPS,
    PRIOR_BATCH_SIZE,
    PRIOR_LR,
    PRIOR_STEPS,
    PRIOR_TIMESTEPS,
    PRIOR_WIDTHS,
)
from survey.metrics.configuration import (
    DEFAULT_ALPHA,
    DEFAULT_CENTER,
    DEFAULT_METRIC,
    DEFAULT_SCORE,
    SCORES,
    MetricKind,
    check_configuration,
    metric_kind,
)
from survey.stimuli import StimulusSpec

if TYPE_CHECKING:
    from survey.metrics.shape import ShapeMetric

# every stage's name; the order they run in follows from the tables each reads and writes (survey.runtime.survey)
STAGE_NAMES = ("stimuli", "networks", "sessions", "activations", "distances", "capacity", "topology", "predictivity",
               "spaces", "prior", "mei")
CONV_SIZE = 4  # conv metric: maps are average-pooled to this many positions a side (distances and their spaces)
DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"
SMALL_DEMO_CONFIG = Path(__file__).parent / "configs" / "demo-small.yaml"  # every stage, smaller (the tests run it)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExecutorConfig(_Strict):
    """How units of work run: in this process, or on Ray actors (local cluster or an existing one)."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None  # Ray address; None: the job's cluster under `ray job submit`, else a local one
    num_workers: int = Field(2, ge=1)  # actors (one per GPU on a GPU cluster)
    num_cpus_per_worker: float = Field(1.0, gt=0)
    num_gpus_per_worker: float = Field(0.0, ge=0)
    threads_per_worker: int = Field(1, ge=1)  # torch intra-op threads inside each unit of work
    max_restarts: int = Field(2, ge=0)
    max_task_retries: int = Field(2, ge=0)
    restart_timeout_s: float = Field(60.0, gt=0)  # an actor down this long (no node has room) is replaced


class TrainConfig(_Strict):
    """Optimiser and task settings of the zoo's training (survey.sources.zoo.train); part of a zoo net's identity."""

    steps: int = Field(300, ge=0)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    temperature: float = Field(0.2, gt=0)  # NT-Xent, contrastive only
    probe_steps: int = Field(100, ge=1)  # LBFGS iterations of the linear probe (contrastive, untrained)
    probe_weight_decay: float = Field(1e-3, ge=0)
    image_size: int = Field(32, ge=16)
    n_train_per_class: int = Field(200, ge=1)
    n_test_per_class: int = Field(50, ge=1)


class ZooReplicas(_Strict):
    """Extra networks: the first `architectures` of the zoo trained again under `objectives` with `seeds` more
    seeds each, named ``zoo<index>-<objective>-s<k>``."""

    architectures: int = Field(1, ge=1)
    objectives: tuple[Literal["supervised", "contrastive", "untrained"], ...] = ("supervised",)
    seeds: int = Field(1, ge=1)


class ZooConfig(_Strict):
    """The generated model zoo: `n_architectures` sampled cells, each trained under every objective."""

    n_architectures: int = Field(8, ge=1)
    objectives: tuple[Literal["supervised", "contrastive", "untrained"], ...] = (
        "supervised", "contrastive", "untrained",
    )
    seed: int = 0
    train: TrainConfig = TrainConfig()
    layers: Literal["all"] | tuple[str, ...] = "all"  # representation layers of every zoo network
    replicas: ZooReplicas | None = None  # more seeds of some architectures (MEIs' within-family evaluation)


class ExternalNetwork(_Strict):
    """A network the user brings: torchvision/timm by name or any ``module:callable``, optional local weights."""

    name: str
    kind: Literal["torchvision", "timm", "callable"]
    target: str
    kwargs: dict = {}
    weights: str | None = None  # local state dict (.safetensors or torch.save of a state dict)
    layers: tuple[str, ...] = Field(min_length=1)
    seed: int = 0  # random init when no weights are given
    input_size: int | None = None  # resize stimuli to this size before the forward pass
    mean: tuple[float, float, float] | None = None  # input normalisation applied after resizing
    std: tuple[float, float, float] | None = None


class SyntheticSessions(_Strict):
    """Simulated V1/V4/IT recordings written as NWB files (see survey.sources.synthetic)."""

    n: int = Field(6, ge=1)
    subjects: int = Field(2, ge=1)
    units_per_area: int = Field(30, ge=1)
    repeats: int = Field(6, ge=2)
    stimuli: tuple[str, ...] = ("natural",)
    seed: int = 0


class NWBSession(_Strict):
    """A recorded session in an NWB file (units with spike times + a stimulus presentation table)."""

    path: str
    name: str | None = None
    stimset: str | None = None  # stimulus set of every presentation when the table has no stimset column
    presentation_table: str | None = None
    index_column: str = "stimulus_index"
    stimset_column: str = "stimulus_set"
    window: tuple[float, float] = (0.05, 0.25)


class SessionsConfig(_Strict):
    synthetic: SyntheticSessions | None = None
    nwb: tuple[NWBSession, ...] = ()


class ActivationsConfig(_Strict):
    """Which stimulus sets every network sees, and how layer outputs are kept."""

    stimuli: tuple[str, ...] | None = None  # stimulus-set names; None: all of them
    batch_size: int = Field(256, ge=1)
    spatial_pool: int = Field(4, ge=1)  # conv maps are average-pooled to at most this many positions a side
    keep_spatial: bool = True  # also store full conv maps (for the convolutional shape metric)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class DistanceMetric(_Strict):
    """One shape-metric configuration (DESIGN §5.1; formulas in `survey.metrics.shapes`), and its one codec: to and
    from the catalog's columns, and to its engine."""

    metric: str = DEFAULT_METRIC  # a registered metric (survey.metrics.configuration)
    alpha: float = DEFAULT_ALPHA  # linear/conv: 0 = CCA … 1 = Procrustes; stochastic: 0 = means … 2 = covariances
    score: Literal[SCORES] = DEFAULT_SCORE  # type: ignore[valid-type]
    center: bool = DEFAULT_CENTER

    @model_validator(mode="after")
    def _valid(self) -> DistanceMetric:
        try:
            check_configuration(self.metric, self.alpha, self.score)
        except SurveyError as err:
            raise ValueError(str(err)) from None
        return self

    @property
    def label(self) -> str:
        return f"{self.metric} alpha={self.alpha:g} {self.score}" + ("" if self.center else " uncentered")

    @property
    def kind(self) -> MetricKind:
        return metric_kind(self.metric)

    def pooling(self, conv_size: int) -> int | None:
        """The pooling size the metric's inputs take: `conv_size` for a metric of maps, else None."""
        return conv_size if self.kind.maps else None

    def columns(self) -> dict[str, Any]:
        """The configuration as the catalog's columns (`shape_distances`, `distance_landmarks`, `spaces`)."""
        return {"metric": self.metric, "alpha": self.alpha, "score_method": self.score, "center": self.center}

    @classmethod
    def from_columns(cls, row: Mapping[str, Any]) -> DistanceMetric:
        """The configuration a catalog row's columns hold."""
        return cls(metric=row["metric"], alpha=row["alpha"], score=row["score_method"], center=row["center"])

    def engine(self, device: str | None = None) -> ShapeMetric:
        """The metric's engine on `device` (None: CUDA when there is one)."""
        from survey.metrics.shape import ShapeMetric

        return ShapeMetric(self.metric, self.alpha, self.score, self.center, device)


class DistancesConfig(_Strict):
    """Shape distances per stimulus set, networks and sessions together, for every metric: all pairs, or only the
    rows of landmarks chosen by maxmin (enough for an embedding space when all pairs are too many)."""

    metrics: tuple[DistanceMetric, ...] = (DistanceMetric(),)
    stimuli: tuple[str, ...] | None = None  # catalog stimulus-set names; None: those of `activations`, else all
    pairs: Literal["all", "landmarks"] = "all"
    landmarks: int = Field(200, ge=2)  # landmarks mode: rows computed (one landmark per round)
    tile_size: int = Field(64, ge=2)  # representations per block; a unit of work is a tile between two blocks
    conv_size: int = Field(CONV_SIZE, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class CapacityConfig(_Strict):
    """Manifold capacity, geometry, alignment and decodability per representation (DESIGN §5.2)."""

    stimuli: tuple[str, ...] | None = None  # manifold sets (stimulus labels = manifolds); None: object manifolds
    kappa: float = Field(0.0, ge=0)
    n_t: int = Field(200, ge=1)
    simulate: bool = True  # also the simulated capacity (bisection on random projections)
    n_reps: int = Field(5, ge=1)  # dichotomies per simulation
    seed: int = 0


class TopologyConfig(_Strict):
    """Level-set topology of every unit's and neuron's tuning map over the tuning grids (DESIGN §5.3)."""

    stimuli: tuple[str, ...] | None = None  # tuning-grid names; None: every tuning grid in the catalog
    n_levels: int = Field(21, ge=2)
    n_splits: int = Field(10, ge=1)  # split halves of the repeats, for recorded neurons' reliability
    smooth: bool = True  # recorded neurons: smooth each map at its noise level before counting


class PredictivityConfig(_Strict):
    """Encoding models: ridge readouts from every network layer to every recorded area on a shared stimulus set,
    scored by cross-validation and corrected by the neurons' split-half reliability (DESIGN §3 `predictivity`)."""

    stimuli: tuple[str, ...] | None = None  # stimulus sets; None: every set that has both layers and recordings
    n_folds: int = Field(5, ge=2)  # folds that score; each neuron's penalty by leave-one-out within the training folds
    seed: int = Field(0, ge=0)


class MeiTargets(_Strict):
    """MEI targets on one network layer: its `units` (a conv layer's channels at the spatial centre), or, with
    `session` and `area`, that area's neurons (columns) through the encoding model fitted from the layer (`layer:
    best`: the layer of highest predictivity for the area)."""

    network: str  # name or network_id
    layer: str  # layer name; `best` for neurons
    units: tuple[int, ...] = Field(min_length=1)
    session: str | None = None  # session_id
    area: str | None = None

    @model_validator(mode="after")
    def _neurons_name_their_area(self) -> MeiTargets:
        if (self.session is None) != (self.area is None):
            raise ValueError("pass both session and area for neurons, neither for network units")
        if self.layer == "best" and self.session is None:
            raise ValueError("layer: best picks an encoding model, so it needs session and area")
        return self


class PriorConfig(_Strict):
    """The project's diffusion prior for EGG (DESIGN §5.5; survey.mei.prior): a small diffusers UNet trained to
    predict the noise on patches of the bundled natural images, at the size of a stimulus set's images."""

    stimuli: str = "natural"  # the stimulus set whose image size the prior is trained at
    channels: Literal[1, 3] = 1  # 1: grayscale patches (the paper's setting); 3: RGB, for models that see colour
    n_patches: int = Field(20_000, ge=1)
    widths: tuple[int, ...] = Field(PRIOR_WIDTHS, min_length=1)
    steps: int = Field(PRIOR_STEPS, ge=1)
    batch_size: int = Field(PRIOR_BATCH_SIZE, ge=1)
    lr: float = Field(PRIOR_LR, gt=0)
    timesteps: int = Field(PRIOR_TIMESTEPS, ge=2)
    seed: int = 0
    # after training, unguided samples checked against the patches (their spectrum slope is stored, their grid
    # logged); at fewer sampling steps a small prior's samples come out smoother
    check_samples: int = Field(64, ge=1)
    check_steps: int = Field(250, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mlflow_uri: str | None = None  # the training loss is logged here (None: sqlite:///<warehouse>/mlflow/mlflow.db)
    experiment: str = "neurosurvey-prior"

    def recipe(self) -> dict:
        """The fields a prior's weights depend on (its identity, with the image size)."""
        return self.model_dump(mode="json", exclude={"stimuli", "check_samples", "check_steps", "device", "mlflow_uri",
                                                     "experiment"})


class EggConfig(_Strict):
    """Energy-guided diffusion (Pierzchlewicz et al. 2023; survey.mei.egg)."""

    steps: int = Field(EGG_STEPS, ge=1)
    energy_scale: float = Field(EGG_ENERGY_SCALE, ge=0)
    # None: the `prior` stage's prior at mei.stimuli's size; else a local diffusers folder or module:callable
    prior: str | None = None


class MeiConfig(_Strict):
    """Most exciting inputs by gradient ascent and by energy-guided diffusion (DESIGN §5.5; survey.mei), each
    scored on the model it was made for, another seed of its architecture and another architecture, and logged to
    MLflow."""

    stimuli: str  # the stimulus set whose mean image is the MEIs' grey and whose contrast norm is theirs
    targets: tuple[MeiTargets, ...] = ()
    # and/or targets by a read-only query over the catalog returning network, layer, unit (and session, area)
    targets_sql: str | None = None
    # ga: gradient ascent; ga_grey: the same on grey images (one channel replicated, same norm), the like-for-like
    # baseline of a grayscale diffusion prior; egg: energy-guided diffusion
    methods: tuple[Literal["ga", "ga_grey", "egg"], ...] = Field(("ga",), min_length=1)
    seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1)  # restarts per target and method; the best is flagged
    steps: int = Field(GA_STEPS, ge=1)
    lr: float = Field(GA_LR, gt=0)
    blur_sigma: float = Field(GA_BLUR_SIGMA, ge=0)
    jitter: int = Field(0, ge=0)
    fourier: bool = False
    norm: float | None = Field(None, gt=0)  # None: the mean L2 norm of the set's images minus its mean image
    natural_patches: int = Field(10_000, ge=0)  # baseline: each target's best natural patch at the same norm; 0: none
    egg: EggConfig = EggConfig()
    evaluate: bool = True  # also score each MEI on another seed of its architecture and on another architecture
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mlflow_uri: str | None = None  # None: sqlite:///<warehouse>/mlflow/mlflow.db
    experiment: str = "neurosurvey-mei"

    @model_validator(mode="after")
    def _some_targets(self) -> MeiConfig:
        if not self.targets and not self.targets_sql:
            raise ValueError("name targets (network, layer, units) or a targets_sql query")
        return self


class SpaceSpec(_Strict):
    """One embedding space: a metric configuration's stored distances on one stimulus set, embedded by landmark MDS
    and indexed in FAISS (DESIGN §5.4)."""

    metric: DistanceMetric = DistanceMetric()
    stimuli: str = "natural"  # stimulus-set name
    dim: int = Field(32, ge=1)
    landmarks: int = Field(200, ge=3)
    kind: Literal["flat", "hnsw"] = "flat"
    conv_size: int = Field(CONV_SIZE, ge=1)  # conv metric: as the distances were computed

    @property
    def label(self) -> str:
        return f"{self.metric.label} · {self.stimuli}"


class SpacesConfig(_Strict):
    build: tuple[SpaceSpec, ...] = (SpaceSpec(),)


class CatalogConfig(_Strict):
    """Upkeep of the Delta tables. Every `compact_after` units, and when it ends, a stage compacts each table it
    wrote once compaction would fold away `compact_after` files under `small_file_bytes` (a commit's cost grows with
    the table's live files) into files of that size, and vacuums files superseded more than `vacuum_hours` ago (a
    query or a unit of work running that long still finds its files)."""

    compact_after: int = Field(64, ge=2)
    small_file_bytes: int = Field(16 << 20, ge=1)
    vacuum_hours: int = Field(1, ge=0)


class SurveyConfig(_Strict):
    """A whole survey; each section configures one stage, and `stages` picks which run."""

    name: str = "survey"
    executor: ExecutorConfig = ExecutorConfig()
    stimuli: tuple[StimulusSpec, ...] = ()
    zoo: ZooConfig | None = None
    networks: tuple[ExternalNetwork, ...] = ()
    sessions: SessionsConfig | None = None
    activations: ActivationsConfig = ActivationsConfig()
    distances: DistancesConfig | None = None
    capacity: CapacityConfig | None = None
    topology: TopologyConfig | None = None
    predictivity: PredictivityConfig | None = None
    prior: PriorConfig | None = None
    mei: MeiConfig | None = None
    spaces: SpacesConfig | None = None
    catalog: CatalogConfig = CatalogConfig()
    stages: tuple[Literal[STAGE_NAMES], ...] = STAGE_NAMES  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _names_resolve(self) -> SurveyConfig:
        names = [spec.name for spec in self.stimuli]
        if len(set(names)) != len(names):
            raise ValueError(f"stimulus set names must be unique, got {names}")
        wanted = list(self.activations.stimuli or ())
        if self.sessions and self.sessions.synthetic:
            wanted += self.sessions.synthetic.stimuli
        wanted += [s.stimset for s in (self.sessions.nwb if self.sessions else ()) if s.stimset]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise ValueError(f"stimulus sets {unknown} are used but not defined under `stimuli:` (defined: {names})")
        network_names = [n.name for n in self.networks]
        if len(set(network_names)) != len(network_names):
            raise ValueError(f"network names must be unique, got {network_names}")
        return self

    def stimset_names(self) -> tuple[str, ...]:
        return self.activations.stimuli or tuple(spec.name for spec in self.stimuli)


def load_config(path: str | Path) -> SurveyConfig:
    """Read and validate a YAML survey config; any problem becomes one line naming the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise SurveyError(f"config {path}: cannot read it ({err.strerror}); pass the path of a YAML file") from None
    except yaml.YAMLError as err:
        raise SurveyError(f"config {path}: not valid YAML ({one_line(err)}); fix the syntax") from None
    return parse_config(data, str(path))


def parse_config(data: dict, source: str = "config") -> SurveyConfig:
    try:
        return SurveyConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise SurveyError(f"config {source}: {where}: {one_line(first['msg'])}{more}; fix this field") from None
