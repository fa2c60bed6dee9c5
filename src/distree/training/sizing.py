"""Defaults that fit the data set's size, and a warning for runs too short to learn.

The built-in defaults (batch 128, 10 epochs per phase, a WRN-16-4 teacher) suit data sets
of tens of thousands of images. On a user's own folder of a thousand images they give
about a hundred optimizer steps per phase, and the student ends far below what it can
reach (measured: 80% where the teacher reached 95%). So whatever the configuration leaves
unset is sized from the number of training images: smaller batches and more epochs for
small sets, so that every phase gets about ``MIN_STEPS`` steps, and a cheaper teacher
below ``SMALL_DATA`` images, where the big one would take most of the time and gain
nothing. Fields the user set are never changed.
"""

from __future__ import annotations

import math

from distree.config import OptimConfig, RunConfig, WideResNetConfig

#: Optimizer steps per phase that the defaults aim for (and below which a run is warned).
MIN_STEPS = 1500
#: Images a phase must see when it takes fewer than ``MIN_STEPS`` steps: ``MIN_STEPS``
#: batches of 128. Large-batch recipes learn in fewer steps (the fast CIFAR-10 recipe's
#: 30 epochs are 1,320 steps of 1,024), but not from fewer images.
MIN_SAMPLES = MIN_STEPS * 128
#: Below this many training images, an unset teacher is WRN-16-2 rather than WRN-16-4.
SMALL_DATA = 20_000
SMALL_TEACHER = WideResNetConfig(depth=16, width=2)


def default_batch_size(num_images: int) -> int:
    """128 for large sets; for small ones a power of two near num_images / 20, at least 32."""
    if num_images >= 128 * 20:
        return 128
    return max(32, 2 ** int(math.log2(max(1, num_images // 20))))


def steps(optim: OptimConfig, num_images: int) -> int:
    """Optimizer steps of one phase."""
    return optim.epochs * math.ceil(num_images / optim.batch_size)


def _size_optim(optim: OptimConfig, num_images: int) -> OptimConfig:
    update: dict = {}
    if "batch_size" not in optim.model_fields_set:
        update["batch_size"] = default_batch_size(num_images)
    if "epochs" not in optim.model_fields_set:
        per_epoch = math.ceil(num_images / update.get("batch_size", optim.batch_size))
        update["epochs"] = max(optim.epochs, math.ceil(MIN_STEPS / per_epoch))
    return optim.model_copy(update=update) if update else optim


def fit_to_data(config: RunConfig, num_images: int) -> tuple[RunConfig, list[str]]:
    """``config`` with its unset sizes chosen for ``num_images`` training images, and one
    line per change."""
    if num_images < 1:
        raise ValueError(f"no training images to size a run for (got {num_images})")
    update: dict = {}
    for name in ("teacher_optim", "student_optim"):
        old = getattr(config, name)
        new = _size_optim(old, num_images)
        if new != old:
            update[name] = new
    if "teacher" not in config.model_fields_set and num_images < SMALL_DATA:
        update["teacher"] = SMALL_TEACHER
    if not update:
        return config, []
    notes = []
    if "teacher" in update:
        notes.append(f"teacher WRN-16-2 (fewer than {SMALL_DATA:,} training images)")
    for name in ("teacher_optim", "student_optim"):
        if name in update:
            o = update[name]
            notes.append(
                f"{name.split('_')[0]}: {o.epochs} epoch{'s' * (o.epochs != 1)} at batch {o.batch_size} "
                f"({steps(o, num_images):,} steps)"
            )
    return config.model_copy(update=update), notes


def too_few_steps(config: RunConfig, num_images: int, teacher_trained: bool = True) -> list[str]:
    """A warning per phase whose schedule is too short to learn from (fewer than
    ``MIN_STEPS`` steps and either ``MIN_SAMPLES`` images seen or an eighth of the steps),
    with a setting to try.

    ``teacher_trained`` False: the teacher comes from another run, only the student trains.
    """
    out = []
    phases = [("teacher", config.teacher_optim)] if teacher_trained else []
    for phase, optim in [*phases, ("student", config.student_optim)]:
        n = steps(optim, num_images)
        few_images = optim.epochs * num_images < MIN_SAMPLES
        if n < MIN_STEPS and (few_images or n < MIN_STEPS // 8):
            per_epoch = math.ceil(num_images / optim.batch_size)
            enough = max(
                min(math.ceil(MIN_STEPS / per_epoch), math.ceil(MIN_SAMPLES / num_images)),
                math.ceil(MIN_STEPS // 8 / per_epoch),
            )
            out.append(
                f"{phase}: {n:,} optimizer steps ({optim.epochs} epoch{'s' * (optim.epochs != 1)} of "
                f"{per_epoch} batches of {optim.batch_size}) are too few to learn from; about {MIN_STEPS:,} "
                f"steps or {MIN_SAMPLES:,} images seen are needed: try "
                f"--epochs {enough}, or leave the epochs and batch size unset"
            )
    return out
