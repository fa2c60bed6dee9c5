"""Typed configuration for models, data and training, validated where it enters.

Every configuration object is a pydantic model with ``extra="forbid"``, so a misspelt
field is an error that names it instead of a silently ignored key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

# The names the command line reads before anything is loaded are defined in distree.defaults
# (which imports neither pydantic nor PyYAML), and found here too.
from distree.defaults import (  # noqa: F401
    DATA_ENV_VAR,
    DATA_FORMATS,
    DEFAULT_POLICY,
    DEMO_POLICIES,
    PLUGINS_ENV_VAR,
)


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the field."""


class _Strict(BaseModel):
    # No inf or nan anywhere: a learning rate of inf is a typo, not a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class WideResNetConfig(_Strict):
    """A pre-activation CIFAR WideResNet WRN-depth-width."""

    arch: Literal["wideresnet"] = "wideresnet"
    depth: int = Field(16, description="total depth; (depth - 4) must be divisible by 6")
    width: float = Field(4.0, gt=0, description="widening factor k (fractions give thin nets)")
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("depth")
    @classmethod
    def _depth_ok(cls, v: int) -> int:
        if v < 10 or (v - 4) % 6:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {v}")
        return v

    @property
    def blocks_per_group(self) -> int:
        """Residual blocks in each of the three groups."""
        return (self.depth - 4) // 6

    @property
    def num_blocks(self) -> int:
        """Residual blocks in all (the points an exit can follow)."""
        return 3 * self.blocks_per_group

    @property
    def group_ends(self) -> list[int]:
        """The block counts at the end of each of the three groups."""
        n = self.blocks_per_group
        return [n, 2 * n, 3 * n]


class WhitenedConvNetConfig(_Strict):
    """A fast plain convnet for the teacher: a frozen patch-whitening first layer, then one
    group per width (conv, max-pool, BN, GELU, conv, BN, GELU), a global max-pool and a
    scaled linear classifier (the design of airbench, Jordan 2024, 94% on CIFAR-10 in
    about 10 epochs)."""

    arch: Literal["whitened-convnet"]
    widths: list[int] = Field(default_factory=lambda: [64, 256, 256], min_length=1)
    whiten_kernel: int = Field(2, ge=1, le=4, description="side of the patches the first layer whitens")
    bn_momentum: float = Field(
        0.4, gt=0, le=1, description="BatchNorm running-statistics momentum (PyTorch's convention)"
    )
    logit_scale: float = Field(1 / 9, gt=0, description="the classifier's outputs are multiplied by this")

    @field_validator("widths")
    @classmethod
    def _widths_ok(cls, v: list[int]) -> list[int]:
        if any(w < 1 for w in v):
            raise ValueError(f"widths must be positive, got {v}")
        return v

    @property
    def blocks_per_group(self) -> int:
        """Each group is one block (an exit can follow any group)."""
        return 1

    @property
    def num_blocks(self) -> int:
        """Groups in all (the points an exit can follow)."""
        return len(self.widths)

    @property
    def group_ends(self) -> list[int]:
        """The block counts at the end of each group: every block."""
        return list(range(1, len(self.widths) + 1))


def _teacher_arch(data: object) -> str:
    # Configs without an arch (every one written before there was a choice) mean a WideResNet.
    if isinstance(data, dict):
        return data.get("arch", "wideresnet")
    return getattr(data, "arch", "wideresnet")


#: A network of blocks (the teacher, or a student branch), its architecture chosen by its
#: ``arch`` field (default ``wideresnet``).
NetConfig = Annotated[
    Annotated[WideResNetConfig, Tag("wideresnet")] | Annotated[WhitenedConvNetConfig, Tag("whitened-convnet")],
    Discriminator(_teacher_arch),
]


def _group_ends(branches: list[WideResNetConfig | WhitenedConvNetConfig]) -> list[int]:
    """The default exit points: the end of each group of blocks."""
    return branches[0].group_ends if branches else []


class StudentConfig(_Strict):
    """The DistrEE student: N parallel thin WideResNet branches and fused exit heads."""

    branches: list[NetConfig] = Field(
        default_factory=lambda: [WideResNetConfig(depth=10, width=1.0) for _ in range(4)],
        min_length=1,
    )
    exit_points: list[int] = Field(
        default_factory=lambda data: _group_ends(data.get("branches") or []),
        description="exit points as the number of residual blocks completed; "
        "default: one at the end of each residual group",
    )
    embed_dim: int = Field(128, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _earlier_name(cls, data: object) -> object:
        # Configs and run.json files written before the name was unified call it exits
        # (null meaning the default).
        if isinstance(data, dict) and "exits" in data and "exit_points" not in data:
            data = dict(data)
            exits = data.pop("exits")
            if exits is not None:
                data["exit_points"] = exits
        return data

    @model_validator(mode="after")
    def _consistent(self) -> StudentConfig:
        blocks = {b.num_blocks for b in self.branches}
        if len(blocks) != 1:
            raise ValueError(
                f"branches: all branches need the same number of blocks, to share the exit points (got {sorted(blocks)})"
            )
        total = self.total_blocks
        e = self.exit_points
        if not e or any(not 1 <= x <= total for x in e) or sorted(set(e)) != e or e[-1] != total:
            raise ValueError(
                f"exit_points: must be strictly increasing block counts in 1..{total} ending at "
                f"{total} (the last block), got {e}"
            )
        return self

    @property
    def total_blocks(self) -> int:
        """Blocks per branch."""
        return self.branches[0].num_blocks


class OptimConfig(_Strict):
    """SGD with Nesterov momentum, a learning-rate schedule with warm-up, and the
    ingredients of fast CIFAR-10 recipes (docs/training.md measures each)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "linear"] = Field(
        "cosine",
        description="cosine: warm-up from 0, cosine decay to 0; linear: warm-up from 0.2 x lr, "
        "linear decay to 0.07 x lr",
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    norm_lr_scale: float = Field(
        1.0,
        gt=0,
        description="learning rate of the normalisation layers' parameters relative to the others; "
        "their weight decay per step stays the same",
    )
    lookahead_every: int = Field(
        0,
        ge=0,
        description="every this many steps, pull the weights toward a running average of them and "
        "continue from it (lookahead), ending on the average; 0: off",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="arithmetic of the training steps: bf16 mixed precision, fp32, or auto (bf16 on CUDA, fp32 "
        "on CPUs; bf16 pays on CPUs with AVX512-BF16: 1.2 to 1.9x faster per phase, docs/training.md)",
    )


class DistillConfig(_Strict):
    """Weights of the per-exit loss terms and the branch drop-out of student training."""

    kd_weight: float = Field(1.0, ge=0, description="weight of the distillation term")
    temperature: float = Field(4.0, gt=0)
    ft_weight: float = Field(1.0, ge=0, description="weight of the feature-transfer term")
    branch_dropout: float = Field(0.15, ge=0, lt=1, description="probability that a branch is dropped for a sample")
    branch_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the per-branch term: every branch alone through every exit head learns the labels "
        "and the teacher (CE + KD), so that the branches' own features at one exit are comparable and their "
        "agreement can serve as an exit criterion",
    )
    subset_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the device-subset term: for each sample a wake order (a rotation of the branches, "
        "starting anywhere) is drawn, and the first 1, 2, ..., N-1 branches of it, fused through every exit head, "
        "learn the labels and the teacher (CE + KD), so that the subsets a depth-and-devices schedule runs on "
        "are each accurate (docs/policies.md)",
    )
    teacher_views: int = Field(
        0,
        ge=0,
        description="with crop augmentation: compute the teacher's outputs once on this many random views "
        "(crop + flip) of each training image and train the student on those views; 0 runs the teacher at "
        "every step. Without crops the flip views are always computed once.",
    )


class DataConfig(_Strict):
    """How the data set is split and augmented."""

    val_fraction: float = Field(0.1, gt=0, lt=1)
    split_seed: int = 0
    crop_padding: int = Field(4, ge=0)
    pad_mode: Literal["zeros", "reflect"] = Field("zeros", description="what the crop padding is filled with")
    flip: bool = True
    alternate_flip: bool = Field(
        False,
        description="with flip: mirror a random half of the images on even epochs and the other half on "
        "odd ones, rather than a fresh coin per image and epoch",
    )


class RunConfig(_Strict):
    """Everything ``distree train`` needs besides the data path."""

    seed: int = 0
    data: DataConfig = DataConfig()
    teacher: NetConfig = WideResNetConfig()
    student: StudentConfig = StudentConfig()
    teacher_optim: OptimConfig = OptimConfig()
    student_optim: OptimConfig = OptimConfig()
    distill: DistillConfig = DistillConfig()
    eval_batch_size: int = Field(512, ge=1)

    def with_epochs(self, epochs: int) -> RunConfig:
        """Return a copy with both training phases set to ``epochs`` epochs, validated as
        the same field in a file is (``--epochs 0`` is an error that names it)."""

        # Only epochs becomes set: what the config left unset stays unset (sized to the data).
        def phase(optim: OptimConfig) -> OptimConfig:
            return parse_config(OptimConfig, {**optim.model_dump(exclude_unset=True), "epochs": epochs}, "--epochs")

        return self.model_copy(
            update={"teacher_optim": phase(self.teacher_optim), "student_optim": phase(self.student_optim)}
        )


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  {loc}: {e['msg']}")
    return f"invalid configuration in {source}:\n" + "\n".join(lines)


def parse_config(cls: type[BaseModel], data: Any, source: str = "config") -> Any:
    """Validate ``data`` into ``cls``, raising ConfigError that names each bad field."""
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict:
    """The mapping at the top of a YAML (or JSON) file; ConfigError naming the file when it
    is missing, does not parse, or holds something else."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse {p}: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of fields")
    return raw


def set_field(raw: dict, assignment: str) -> dict:
    """``raw`` with one ``dotted.key=value`` applied (the value read as YAML: numbers,
    booleans, lists, strings); the mapping is validated afterwards, as a file is."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. student.embed_dim=64")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {assignment!r}: cannot read the value: {err}") from None
    *parents, leaf = key.strip().split(".")
    node = raw
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {p} is a value, not a group of fields")
        node = child
    node[leaf] = value
    return raw


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a RunConfig from a YAML or JSON file (``None``: the defaults), with
    ``--set KEY=VALUE`` ``overrides`` applied before validation, so that a bad key or
    value is named as a file's would be, and what is not set stays unset (sized to the
    data set)."""
    raw = read_yaml_mapping(path) if path is not None else {}
    for assignment in overrides:
        raw = set_field(raw, assignment)
    source = str(path) if path is not None else "the defaults"
    return parse_config(RunConfig, raw, source + (" with --set" if overrides else ""))


def dump_json(model: BaseModel, path: Path) -> None:
    """Write a config as pretty JSON."""
    path.write_text(json.dumps(model.model_dump(mode="json"), indent=2) + "\n")
