"""A generated model zoo: small nets from a NAS-Bench-101-like cell space, trained briefly on CPU.

The cell space follows NAS-Bench-101 (Ying et al. 2019): a cell is a DAG over at most 6 nodes (input,
intermediate ops, output) given by an upper-triangular adjacency matrix. Nets are trained on a built-in
offline task (which bundled image does a patch come from?) with one of three objectives: ``supervised``
(cross-entropy), ``contrastive`` (SimCLR NT-Xent, Chen et al. 2020, then a linear probe) or ``untrained``
(random init, then a linear probe), so every net ends up classifying the task.

Input normalisation lives inside the net: ``CellNet.norm`` holds the per-channel mean and std of the train
split as buffers (saved with the weights), so callers feed raw [0, 1] images everywhere.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn import functional as nnf

from survey.atomic import staged_path
from survey.config import TrainConfig
from survey.hashing import file_hash
from survey.images import BUNDLED_IMAGES, bundled_image, cut_patches

OPS = ("conv3x3", "conv1x1", "maxpool3x3")
ACTIVATIONS = ("relu", "gelu", "tanh")
OBJECTIVES = ("supervised", "contrastive", "untrained")
MAX_NODES = 6
MAX_EDGES = 9  # as in NAS-Bench-101
N_CLASSES = len(BUNDLED_IMAGES)

# Ranges that `sample_spec` draws from.
SAMPLE_NODES = (3, 4, 5, 6)
SAMPLE_STACKS = (1, 2, 3)
SAMPLE_CELLS_PER_STACK = (1, 2)
SAMPLE_WIDTHS = (8, 12, 16, 24, 32)


# ----------------------------------------------------------------------------------------------- cell spec


def _reachable(matrix: np.ndarray, start: int, forward: bool) -> set[int]:
    adjacency = matrix if forward else matrix.T
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        for nxt in np.flatnonzero(adjacency[node]):
            if int(nxt) not in seen:
                seen.add(int(nxt))
                todo.append(int(nxt))
    return seen


def prune_cell(
    matrix: np.ndarray, ops: tuple[str, ...]
) -> tuple[tuple[tuple[int, ...], ...], tuple[str, ...]] | None:
    """Drop nodes off every input→output path (as NAS-Bench-101 does); None if the output is cut off."""
    matrix = np.asarray(matrix, dtype=np.int64)
    n = len(matrix)
    on_path = _reachable(matrix, 0, True) & _reachable(matrix, n - 1, False)
    if n - 1 not in on_path:
        return None
    keep = sorted(on_path)
    pruned = matrix[np.ix_(keep, keep)]
    return tuple(tuple(int(v) for v in row) for row in pruned), tuple(ops[i - 1] for i in keep[1:-1])


class CellSpec(BaseModel):
    """One architecture: the cell DAG (NAS-Bench-101, Ying et al. 2019) and the macro skeleton around it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    matrix: tuple[tuple[int, ...], ...]
    ops: tuple[str, ...]
    stacks: int = Field(ge=1, le=3)
    cells_per_stack: int = Field(ge=1, le=2)
    width: int = Field(ge=4, le=64)
    activation: Literal["relu", "gelu", "tanh"]

    @model_validator(mode="after")
    def _check_graph(self) -> CellSpec:
        n = len(self.matrix)
        if not 3 <= n <= MAX_NODES:
            raise ValueError(f"matrix has {n} nodes; need 3 to {MAX_NODES} (input, ops, output)")
        if any(len(row) != n for row in self.matrix):
            raise ValueError("matrix must be square")
        matrix = np.array(self.matrix)
        if not np.isin(matrix, (0, 1)).all():
            raise ValueError("matrix entries must be 0 or 1")
        if np.tril(matrix).any():
            raise ValueError("matrix must be strictly upper triangular (a DAG in topological order)")
        if len(self.ops) != n - 2:
            raise ValueError(f"ops has {len(self.ops)} entries; a {n}-node matrix needs {n - 2}")
        bad = [op for op in self.ops if op not in OPS]
        if bad:
            raise ValueError(f"unknown op {bad[0]!r}; choose from {', '.join(OPS)}")
        if prune_cell(matrix, self.ops) != (self.matrix, self.ops):
            raise ValueError("every intermediate node must lie on an input→output path (prune_cell fixes it)")
        return self


def sample_spec(rng: np.random.Generator) -> CellSpec:
    """Draw a random valid spec: random DAG (≤ 9 edges), random ops, pruned as in NAS-Bench-101."""
    while True:
        n = int(rng.choice(SAMPLE_NODES))
        matrix = np.triu(rng.integers(0, 2, (n, n)), k=1)
        ops = tuple(str(op) for op in rng.choice(OPS, n - 2))
        pruned = prune_cell(matrix, ops)
        if matrix.sum() > MAX_EDGES or pruned is None or len(pruned[0]) < 3:
            continue
        return CellSpec(
            matrix=pruned[0],
            ops=pruned[1],
            stacks=int(rng.choice(SAMPLE_STACKS)),
            cells_per_stack=int(rng.choice(SAMPLE_CELLS_PER_STACK)),
            width=int(rng.choice(SAMPLE_WIDTHS)),
            activation=str(rng.choice(ACTIVATIONS)),
        )


# ------------------------------------------------------------------------------------------------- network


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[name]()


def _conv_bn(c_in: int, c_out: int, kernel: int, activation: str | None, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    layers = [conv, nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, *([_activation(activation)] if activation else []))


class Normalize(nn.Module):
    """Per-channel input normalisation; mean and std are buffers, so they travel with the state dict."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean[:, None, None]) / self.std[:, None, None]


def _sum(tensors: Iterable[Tensor]) -> Tensor:
    first, *rest = tensors
    for t in rest:
        first = first + t
    return first


class Cell(nn.Module):
    """One cell: node = op(sum of its inputs); output = sum of the output node's op inputs + projected input.

    The projected cell input is always added (a residual skip), so an input→output edge is that skip.
    """

    def __init__(self, spec: CellSpec, c_in: int, c_out: int) -> None:
        super().__init__()
        self.preds = [tuple(i for i in range(j) if spec.matrix[i][j]) for j in range(len(spec.matrix))]
        self.proj = nn.Identity() if c_in == c_out else _conv_bn(c_in, c_out, 1, None)
        self.ops = nn.ModuleList(
            nn.MaxPool2d(3, stride=1, padding=1)
            if op == "maxpool3x3"
            else _conv_bn(c_out, c_out, 3 if op == "conv3x3" else 1, spec.activation)
            for op in spec.ops
        )

    def forward(self, x: Tensor) -> Tensor:
        nodes = [self.proj(x)]
        for j, op in enumerate(self.ops, start=1):
            nodes.append(op(_sum(nodes[i] for i in self.preds[j])))
        return _sum([nodes[0], *(nodes[i] for i in self.preds[-1] if i)])


class CellNet(nn.Module):
    """norm → stem → stack{i}.cell{j} (2×2 max-pool and channel doubling between stacks) → pool → head.

    The stem convolution has stride 2 (cells of a 32×32 input run at 16, 8 and 4 pixels), which keeps one
    training run within seconds on a CPU core.
    """

    def __init__(self, spec: CellSpec, n_classes: int) -> None:
        super().__init__()
        self.spec = spec
        self.norm = Normalize()
        self.stem = _conv_bn(3, spec.width, 3, spec.activation, stride=2)
        self._stacks: list[str] = []
        channels = spec.width
        for i in range(spec.stacks):
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            if i:
                blocks["down"] = nn.MaxPool2d(2)
            c_out = spec.width * 2**i
            for j in range(spec.cells_per_stack):
                blocks[f"cell{j}"] = Cell(spec, channels, c_out)
                channels = c_out
            self.add_module(f"stack{i}", nn.Sequential(blocks))
            self._stacks.append(f"stack{i}")
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels, n_classes)
        self.n_features = channels

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Representation layers, input to output: stem, every cell, pool."""
        spec = self.spec
        cells = [f"stack{i}.cell{j}" for i in range(spec.stacks) for j in range(spec.cells_per_stack)]
        return ("stem", *cells, "pool")

    def features(self, x: Tensor) -> Tensor:
        """Pooled features (batch × n_features) of raw [0, 1] images."""
        x = self.stem(self.norm(x))
        for name in self._stacks:
            x = getattr(self, name)(x)
        return self.pool(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """One CPU thread and a forked, seeded global RNG; both restored on exit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def _initialise(net: nn.Module, seed: int) -> None:
    with _deterministic(seed):
        for module in net.modules():
            if module is not net and hasattr(module, "reset_parameters"):
                module.reset_parameters()


def build_network(spec: CellSpec, n_classes: int = N_CLASSES, seed: int = 0) -> CellNet:
    """A CellNet with parameters initialised from `seed` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        net = CellNet(spec, n_classes)
    _initialise(net, seed)
    return net


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------------------------------- task


@lru_cache(maxsize=4)
def _task_arrays(size: int, n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, ...]:
    splits = {"train": ([], [], n_train, (0.0, 0.7)), "test": ([], [], n_test, (0.75, 1.0))}
    for label, name in enumerate(BUNDLED_IMAGES):
        for k, (xs, ys, n, x_range) in enumerate(splits.values()):
            rng = np.random.default_rng([seed, label, k])
            xs.append(cut_patches(bundled_image(name), n, size, rng, x_range))
            ys.append(np.full(n, label, dtype=np.int64))
    return tuple(np.concatenate(part) for xs, ys, _, _ in splits.values() for part in (xs, ys))


def builtin_task(
    size: int = 32, n_train_per_class: int = 200, n_test_per_class: int = 50, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_test, y_test): which bundled image is a patch from? One class per image.

    Train patches come from columns (0, 0.7) of each image and test patches from (0.75, 1.0), so the splits
    are spatially disjoint. Images are raw RGB in [0, 1]: `train` stores the train split's per-channel mean
    and std in the net's own ``norm`` layer, which applies them in training, evaluation and later extraction.
    """
    arrays = _task_arrays(size, n_train_per_class, n_test_per_class, seed)
    return tuple(torch.from_numpy(a.copy()) for a in arrays)


# -------------------------------------------------------------------------------------------------- training


def _shift_flip(x: Tensor, gen: torch.Generator, pad: int = 4) -> Tensor:
    """Random translation by up to `pad` pixels (reflect padding, then crop) and random horizontal flip."""
    b, _, h, w = x.shape
    padded = nnf.pad(x, (pad, pad, pad, pad), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=gen)
    rows = (oy + torch.arange(h))[:, :, None]
    cols = (ox + torch.arange(w))[:, None, :]
    out = padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _simclr_view(x: Tensor, gen: torch.Generator) -> Tensor:
    """One SimCLR-style view: shift-crop, flip, brightness/contrast jitter, gaussian noise."""
    x = _shift_flip(x, gen)
    b = x.shape[0]
    contrast = 0.6 + 0.8 * torch.rand(b, 1, 1, 1, generator=gen)
    brightness = 0.4 * torch.rand(b, 1, 1, 1, generator=gen) - 0.2
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    x = x + 0.05 * torch.randn(x.shape, generator=gen)
    return x.clamp(0.0, 1.0)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's normalised-temperature cross-entropy over 2B views (Chen et al. 2020)."""
    z = nnf.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), -math.inf)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return nnf.cross_entropy(logits, targets)


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last)  # faster CPU convolutions


@torch.no_grad()
def _features(net: CellNet, x: Tensor, batch: int = 256) -> Tensor:
    return torch.cat([net.features(_channels_last(x[i : i + batch])) for i in range(0, len(x), batch)])


@torch.no_grad()
def _accuracy(net: CellNet, x: Tensor, y: Tensor) -> float:
    return float((net.head(_features(net, x)).argmax(1) == y).double().mean())


def _fit_probe(net: CellNet, x: Tensor, y: Tensor, config: TrainConfig) -> None:
    """Logistic regression on frozen, standardised pooled features (LBFGS); folded into `net.head`."""
    feats = _features(net, x)
    mu, sigma = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mu) / sigma
    w = torch.zeros(net.head.out_features, z.shape[1], requires_grad=True)
    b = torch.zeros(net.head.out_features, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=config.probe_steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nnf.cross_entropy(z @ w.T + b, y) + config.probe_weight_decay * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        net.head.weight.copy_(w / sigma)
        net.head.bias.copy_(b - (w / sigma) @ mu)


def _optimise(
    net: CellNet, objective: str, config: TrainConfig, x: Tensor, y: Tensor, gen: torch.Generator
) -> None:
    """AdamW with a one-cycle schedule: cross-entropy on shifted/flipped patches, or NT-Xent on two views."""
    params = list(net.parameters())
    if objective == "contrastive":
        projector = nn.Sequential(nn.Linear(net.n_features, 64), nn.ReLU(), nn.Linear(64, 32))
        params += list(projector.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=config.steps, pct_start=0.15)
    net.train()
    for _ in range(config.steps):
        idx = torch.randint(0, len(x), (config.batch_size,), generator=gen)
        if objective == "supervised":
            loss = nnf.cross_entropy(net(_channels_last(_shift_flip(x[idx], gen))), y[idx])
        else:
            views = torch.cat([_simclr_view(x[idx], gen), _simclr_view(x[idx], gen)])
            z = projector(net.features(_channels_last(views)))
            loss = nt_xent(*z.chunk(2), config.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


def train(net: CellNet, objective: str, config: TrainConfig | None = None, seed: int = 0) -> dict[str, float]:
    """Train `net` in place on the built-in task; returns train/test accuracy and seconds.

    Parameters are first re-initialised from `seed`, so the weights depend only on (spec, objective, config,
    seed) and are bit-identical across runs on CPU. ``contrastive`` trains with NT-Xent through a 2-layer
    projection head that is discarded afterwards; ``contrastive`` and ``untrained`` nets then get a linear
    probe on the pooled features as their head. Accuracies are of the final head, in eval mode.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    config = config or TrainConfig()
    start = time.perf_counter()
    x_train, y_train, x_test, y_test = builtin_task(
        config.image_size, config.n_train_per_class, config.n_test_per_class
    )
    _initialise(net, seed)
    with torch.no_grad():
        net.norm.mean.copy_(x_train.mean(dim=(0, 2, 3)))
        net.norm.std.copy_(x_train.std(dim=(0, 2, 3)))
    net.to(memory_format=torch.channels_last)
    try:
        with _deterministic(seed):
            if objective != "untrained" and config.steps:
                _optimise(net, objective, config, x_train, y_train, torch.Generator().manual_seed(seed))
            net.eval()
            if objective != "supervised":
                _fit_probe(net, x_train, y_train, config)
            accuracy = {
                "train_accuracy": _accuracy(net, x_train, y_train),
                "test_accuracy": _accuracy(net, x_test, y_test),
            }
    finally:
        net.to(memory_format=torch.contiguous_format)
    return {**accuracy, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------------- weights


def save_weights(net: nn.Module, path: str | os.PathLike[str]) -> str:
    """Write the state dict as safetensors atomically (temp file, os.replace); sha256 hex of the file."""
    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    with staged_path(path) as staged:
        save_file(state, staged)
        digest = file_hash(staged)
    return digest
