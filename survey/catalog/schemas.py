"""The schema of every catalog table (a Delta table of Parquet files), declared once (catalogs/README.md)."""

from __future__ import annotations

import pyarrow as pa

_PROVENANCE = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("code_version", pa.string(), nullable=False),
    pa.field("unit_key", pa.string(), nullable=False),  # the unit of work whose commit wrote the row
]


def _schema(*fields: pa.Field) -> pa.Schema:
    return pa.schema([*fields, *_PROVENANCE])


STIMULUS_SETS = _schema(
    pa.field("stimset_id", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("n_images", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("width", pa.int32(), nullable=False),
    pa.field("channels", pa.int32(), nullable=False),
    pa.field("params", pa.string(), nullable=False),  # JSON of the generating spec
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),  # .npz with images, labels, coords
)

NETWORKS = _schema(
    pa.field("network_id", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("family", pa.string(), nullable=False),  # zoo | torchvision | timm | callable
    pa.field("spec", pa.string(), nullable=False),  # JSON: cell spec, or kind/target/kwargs
    pa.field("layers", pa.list_(pa.string()), nullable=False),  # representation layers, input to output
    pa.field("n_params", pa.int64(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("objective", pa.string(), nullable=False),  # supervised | contrastive | untrained | external
    pa.field("train_accuracy", pa.float64()),
    pa.field("test_accuracy", pa.float64()),
    pa.field("train_seconds", pa.float64()),
    pa.field("weights_uri", pa.string(), nullable=False),  # safetensors
    pa.field("content_hash", pa.string(), nullable=False),  # sha256 of the weights file
)

SESSIONS = _schema(
    pa.field("session_id", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("subject", pa.string(), nullable=False),
    pa.field("areas", pa.list_(pa.string()), nullable=False),
    pa.field("n_units", pa.int32(), nullable=False),
    pa.field("stimsets", pa.list_(pa.string()), nullable=False),  # stimset_id of each presented set
    pa.field("n_stimuli", pa.int32(), nullable=False),  # over all presented sets
    pa.field("n_repeats", pa.int32(), nullable=False),  # smallest over the presented sets
    pa.field("synthetic", pa.bool_(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),  # the NWB file
    pa.field("content_hash", pa.string(), nullable=False),  # of the binned response tensors
)

REPRESENTATIONS = _schema(
    pa.field("rep_id", pa.string(), nullable=False),
    pa.field("source_kind", pa.string(), nullable=False),  # network | session
    pa.field("source_id", pa.string(), nullable=False),  # network_id or session_id
    pa.field("source_name", pa.string(), nullable=False),
    pa.field("layer_or_area", pa.string(), nullable=False),
    pa.field("layer_index", pa.int32(), nullable=False),  # position among the source's layers / areas
    pa.field("depth", pa.float64()),  # relative depth in [0, 1]; areas: V1 0, V2 .25, V4 .5, IT 1
    pa.field("stimset_id", pa.string(), nullable=False),
    pa.field("n_stimuli", pa.int32(), nullable=False),
    pa.field("n_units", pa.int32(), nullable=False),
    pa.field("array_uri", pa.string(), nullable=False),  # .npy, n_stimuli × n_units float32
    pa.field("spatial_uri", pa.string()),  # conv layers: .npy, n_stimuli × C × H × W float32
    pa.field("repeats_uri", pa.string()),  # sessions: .npy, n_stimuli × n_repeats × n_units float32
    pa.field("n_repeats", pa.int32()),
    pa.field("preprocessing", pa.string(), nullable=False),  # JSON: input size, normalisation, pooling
    pa.field("content_hash", pa.string(), nullable=False),  # of the n_stimuli × n_units array
)

SHAPE_DISTANCES = _schema(  # partitioned by metric: shape_distances/metric=<metric>/
    pa.field("rep_a", pa.string(), nullable=False),  # rep_a < rep_b: one row per unordered pair
    pa.field("rep_b", pa.string(), nullable=False),
    pa.field("stimset_id", pa.string(), nullable=False),
    pa.field("metric", pa.string(), nullable=False),  # linear | permutation | cka | stochastic | conv
    pa.field("alpha", pa.float64(), nullable=False),
    pa.field("score_method", pa.string(), nullable=False),  # angular (radians) | euclidean
    pa.field("center", pa.bool_(), nullable=False),
    pa.field("distance", pa.float64(), nullable=False),
)

CAPACITY = _schema(  # DESIGN §5.2; NULL estimates with a `status` saying why when the theory cannot apply
    pa.field("rep_id", pa.string(), nullable=False),
    pa.field("manifold_set", pa.string(), nullable=False),  # stimset_id; one manifold per stimulus label
    pa.field("source_kind", pa.string(), nullable=False),
    pa.field("n_manifolds", pa.int32(), nullable=False),  # P
    pa.field("n_points", pa.int32(), nullable=False),  # points per manifold (smallest)
    pa.field("n_features", pa.int32(), nullable=False),  # N
    pa.field("kappa", pa.float64(), nullable=False),
    pa.field("n_t", pa.int32(), nullable=False),
    pa.field("capacity", pa.float64()),  # α = 1 / mean(1/α_μ)
    pa.field("radius", pa.float64()),
    pa.field("dimension", pa.float64()),
    pa.field("center_correlation", pa.float64()),  # ρ₀
    pa.field("K", pa.int32()),  # center directions removed
    pa.field("capacities", pa.list_(pa.float64())),  # per manifold, in label order
    pa.field("radii", pa.list_(pa.float64())),
    pa.field("dimensions", pa.list_(pa.float64())),
    pa.field("simulated_capacity", pa.float64()),  # P / N_c by bisection; NULL if not run or not separable
    pa.field("simulated_status", pa.string(), nullable=False),  # ok, or why simulated_capacity is NULL
    pa.field("status", pa.string(), nullable=False),  # ok, or the one-line reason the estimates are NULL
)

ALIGNMENT = _schema(
    pa.field("rep_id", pa.string(), nullable=False),
    pa.field("manifold_set", pa.string(), nullable=False),
    pa.field("center_alignment", pa.float64()),  # mean |cos| between manifold centers
    pa.field("axis_alignment", pa.float64()),  # variance-weighted mean |cos| between principal axes
    pa.field("center_axis_alignment", pa.float64()),  # mean |cos| between one's center and another's axes
    pa.field("decodability", pa.float64()),  # held-out accuracy of a linear classifier of the labels
    pa.field("chance", pa.float64(), nullable=False),  # 1 / P
    pa.field("status", pa.string(), nullable=False),  # ok, or why a value is NULL
)

_LEVELS_INT = pa.list_(pa.int32())  # one entry per level, lowest level first
TOPOLOGY = _schema(
    pa.field("rep_id", pa.string(), nullable=False),
    pa.field("unit", pa.int32(), nullable=False),  # column of the representation (conv: channel at the centre)
    pa.field("grid_id", pa.string(), nullable=False),  # stimset_id of the tuning grid
    pa.field("source_kind", pa.string(), nullable=False),
    pa.field("n_levels", pa.int32(), nullable=False),
    pa.field("n_loop", _LEVELS_INT, nullable=False),  # closed iso-contours per level
    pa.field("n_line", _LEVELS_INT, nullable=False),  # open iso-contours per level
    pa.field("betti0", _LEVELS_INT, nullable=False),
    pa.field("betti1", _LEVELS_INT, nullable=False),
    pa.field("euler", _LEVELS_INT, nullable=False),
    pa.field("isotropy", pa.list_(pa.float64()), nullable=False),  # max/min contour distance to the peak; NaN: open
    pa.field("constant", pa.bool_(), nullable=False),  # flat map: counts 0, summaries NULL
    pa.field("auc_loop", pa.float64()),
    pa.field("auc_line", pa.float64()),
    pa.field("single_branch_level", pa.float64()),
    pa.field("smoothing_sigma", pa.float64()),  # sessions: Gaussian width (grid steps) chosen from the SEM
    pa.field("reliability_correlation", pa.float64()),  # sessions: split-half signature correlation
    pa.field("reliability_agreement", pa.float64()),  # sessions: split-half share of equal counts
)

_PER_NEURON = pa.list_(pa.float64())  # one entry per neuron of the area, in its column order; NULL: not defined
PREDICTIVITY = _schema(  # DESIGN §3; one row per network layer × recorded area on a shared stimulus set
    pa.field("network_rep_id", pa.string(), nullable=False),
    pa.field("session_rep_id", pa.string(), nullable=False),
    pa.field("stimset_id", pa.string(), nullable=False),
    pa.field("network_id", pa.string(), nullable=False),
    pa.field("layer", pa.string(), nullable=False),
    pa.field("depth", pa.float64(), nullable=False),  # the layer's relative depth, 0 (input side) … 1 (output)
    pa.field("session_id", pa.string(), nullable=False),
    pa.field("area", pa.string(), nullable=False),
    pa.field("n_stimuli", pa.int32(), nullable=False),
    pa.field("n_repeats", pa.int32(), nullable=False),
    pa.field("n_neurons", pa.int32(), nullable=False),
    pa.field("n_features", pa.int32(), nullable=False),
    pa.field("n_folds", pa.int32(), nullable=False),
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("median_corrected", pa.float64()),  # median over neurons of r / √reliability (the headline score)
    pa.field("median_r", pa.float64()),  # median held-out Pearson r, uncorrected
    pa.field("r", _PER_NEURON),
    pa.field("reliability", _PER_NEURON),  # split-half, Spearman–Brown: the noise ceiling (as r², of the mean)
    pa.field("corrected", _PER_NEURON),  # NULL where the reliability is not positive
    pa.field("readout_uri", pa.string()),  # .npz: the ridge readout fitted on every stimulus (the encoding model)
    pa.field("status", pa.string(), nullable=False),  # ok, or why the scores are NULL
)

MEI_RUNS = _schema(  # DESIGN §3, §5.5; one row per (target, method, seed), its MLflow child run named
    pa.field("target_kind", pa.string(), nullable=False),  # unit (of a network layer) | neuron (its encoding model)
    pa.field("network_id", pa.string(), nullable=False),
    pa.field("layer", pa.string(), nullable=False),
    pa.field("session_id", pa.string()),  # neurons only
    pa.field("area", pa.string()),
    pa.field("target", pa.int32(), nullable=False),  # unit or channel of the layer, or the neuron's column in its area
    pa.field("stimset_id", pa.string(), nullable=False),  # whose mean image is the grey and whose norm is used
    pa.field("method", pa.string(), nullable=False),  # ga | ga_grey (GA on grey images) | egg
    pa.field("seed", pa.int64(), nullable=False),
    pa.field("is_best", pa.bool_(), nullable=False),  # the target's seed of highest activation (per method)
    pa.field("norm", pa.float64(), nullable=False),  # L2 norm of the image's contrast
    pa.field("steps", pa.int32(), nullable=False),  # ga, ga_grey: ascent steps; egg: respaced diffusion steps
    pa.field("energy_scale", pa.float64()),  # egg only
    pa.field("prior_id", pa.string()),  # egg: the diffusion prior (a priors row, or the folder / callable given)
    pa.field("activation", pa.float64(), nullable=False),  # on the model it was optimised for
    # scored as the catalog stood when the MEI was made (a later survey keeps the row):
    # the target on another seed of the network's architecture (same objective), NULL when none is stored: for
    # neurons the same neuron through the area's encoding model from that network's best layer, for units that
    # network's unit (any layer) whose responses to the stimulus set correlate best with the target's
    pa.field("family_network_id", pa.string()),
    pa.field("family_layer", pa.string()),
    pa.field("family_target", pa.int32()),
    pa.field("family_match", pa.float64()),  # units: that correlation; neurons: NULL
    pa.field("family_activation", pa.float64()),
    # … and on a network of another architecture: for neurons the area's best encoding model over all other
    # architectures, for units the closest unit of the best-trained network of another architecture (same objective
    # first)
    pa.field("cross_network_id", pa.string()),
    pa.field("cross_layer", pa.string()),
    pa.field("cross_target", pa.int32()),
    pa.field("cross_match", pa.float64()),  # units: the correlation; neurons: the cross model's median corrected r
    pa.field("cross_activation", pa.float64()),
    pa.field("natural_max", pa.float64()),  # the target's best over `natural_patches` patches at the same norm
    pa.field("natural_patches", pa.int32(), nullable=False),  # 0: no baseline (natural_max NULL)
    pa.field("seconds", pa.float64(), nullable=False),  # the batch's optimisation time over its MEIs
    pa.field("image_uri", pa.string(), nullable=False),  # .npy, C × H × W contrast (add the set's mean image)
    pa.field("readout_uri", pa.string()),  # neurons: the encoding model's readout
    pa.field("mlflow_run_id", pa.string(), nullable=False),
)

PRIORS = _schema(  # DESIGN §5.5; one row per trained diffusion prior (EGG), keyed by its training recipe
    pa.field("prior_id", pa.string(), nullable=False),
    pa.field("size", pa.int32(), nullable=False),  # images are channels × size × size, in [−1, 1]
    pa.field("channels", pa.int32(), nullable=False),
    pa.field("recipe", pa.string(), nullable=False),  # JSON: the prior config it was trained by
    pa.field("unet_config", pa.string(), nullable=False),  # JSON: diffusers UNet2DModel config
    pa.field("scheduler_config", pa.string(), nullable=False),  # JSON: diffusers DDPMScheduler config
    pa.field("n_params", pa.int64(), nullable=False),
    pa.field("final_loss", pa.float64(), nullable=False),  # mean ε-prediction loss over the last 100 steps
    pa.field("seconds", pa.float64(), nullable=False),
    pa.field("sample_slope", pa.float64(), nullable=False),  # radial power spectrum slope of 64 samples (250 steps)
    pa.field("patch_slope", pa.float64(), nullable=False),  # … and of the training patches
    pa.field("weights_uri", pa.string(), nullable=False),  # safetensors
    pa.field("content_hash", pa.string(), nullable=False),
    pa.field("mlflow_run_id", pa.string(), nullable=False),
)

DISTANCE_BLOCKS = _schema(  # stable groups of representations: a tile of `shape_distances` pairs two blocks
    pa.field("stimset_id", pa.string(), nullable=False),
    pa.field("block_id", pa.string(), nullable=False),
    pa.field("round", pa.int32(), nullable=False),  # planning round that made it (blocks never change afterwards)
    pa.field("rep_ids", pa.list_(pa.string()), nullable=False),
)

DISTANCE_LANDMARKS = _schema(  # distances.pairs: landmarks: the landmarks picked, frozen in the order picked
    pa.field("stimset_id", pa.string(), nullable=False),
    pa.field("metric", pa.string(), nullable=False),
    pa.field("alpha", pa.float64(), nullable=False),
    pa.field("score_method", pa.string(), nullable=False),
    pa.field("center", pa.bool_(), nullable=False),
    pa.field("round", pa.int32(), nullable=False),  # 1 = the seeded first pick; then maxmin
    pa.field("rep_id", pa.string(), nullable=False),
)

SPACES = _schema(  # one row per embedding space version; its files live under arrays/spaces/<space_id>/
    pa.field("space_id", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),  # e.g. "linear alpha=1 angular · natural"
    pa.field("stimset_id", pa.string(), nullable=False),
    pa.field("metric", pa.string(), nullable=False),
    pa.field("alpha", pa.float64(), nullable=False),
    pa.field("score_method", pa.string(), nullable=False),
    pa.field("center", pa.bool_(), nullable=False),
    pa.field("conv_size", pa.int32()),
    pa.field("n_items", pa.int32(), nullable=False),
    pa.field("dim", pa.int32(), nullable=False),
    pa.field("n_landmarks", pa.int32(), nullable=False),
    pa.field("landmarks_from", pa.string(), nullable=False),  # distance_landmarks (frozen) | maxmin (all pairs)
    pa.field("index_kind", pa.string(), nullable=False),  # flat | hnsw
    pa.field("negative_mass", pa.float64(), nullable=False),  # landmark MDS: share of negative eigenvalue mass
    pa.field("stress", pa.float64(), nullable=False),  # Kruskal stress-1 of the vectors over a sample of stored pairs
    pa.field("stress_pairs", pa.int64(), nullable=False),  # pairs in that sample
    pa.field("uri", pa.string(), nullable=False),  # the space's folder: index.faiss, embedder.npz
    pa.field("created", pa.timestamp("ms", tz="UTC"), nullable=False),
)

EMBEDDINGS = _schema(
    pa.field("space_id", pa.string(), nullable=False),
    pa.field("rep_id", pa.string(), nullable=False),
    pa.field("item", pa.int64(), nullable=False),  # the id in the space's FAISS index
    pa.field("is_landmark", pa.bool_(), nullable=False),
    pa.field("vector", pa.list_(pa.float32()), nullable=False),  # `dim` floats (fixed per space)
)

RUNS = _schema(
    pa.field("stage", pa.string(), nullable=False),
    pa.field("config", pa.string(), nullable=False),  # JSON of the stage's part of the survey config
    pa.field("started", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("finished", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # ok
    pa.field("executor", pa.string(), nullable=False),
    pa.field("units_total", pa.int64(), nullable=False),
    pa.field("units_run", pa.int64(), nullable=False),
    pa.field("units_skipped", pa.int64(), nullable=False),
    pa.field("rows", pa.string(), nullable=False),  # JSON: rows written per table
)

TABLES: dict[str, pa.Schema] = {
    "stimulus_sets": STIMULUS_SETS,
    "networks": NETWORKS,
    "sessions": SESSIONS,
    "representations": REPRESENTATIONS,
    "shape_distances": SHAPE_DISTANCES,
    "distance_blocks": DISTANCE_BLOCKS,
    "distance_landmarks": DISTANCE_LANDMARKS,
    "capacity": CAPACITY,
    "alignment": ALIGNMENT,
    "topology": TOPOLOGY,
    "predictivity": PREDICTIVITY,
    "mei_runs": MEI_RUNS,
    "priors": PRIORS,
    "spaces": SPACES,
    "embeddings": EMBEDDINGS,
    "runs": RUNS,
}

# Partition columns per table: Delta keeps each value's files under <table>/<column>=<value>/.
PARTITIONS: dict[str, tuple[str, ...]] = {"shape_distances": ("metric",)}

# Columns that hold a stored file's path (relative to the warehouse root; DESIGN §3): every `uri` and `*_uri` column.
PATH_COLUMNS: dict[str, tuple[str, ...]] = {
    table: tuple(name for name in schema.names if name == "uri" or name.endswith("_uri"))
    for table, schema in TABLES.items()
}
