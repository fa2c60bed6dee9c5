from distree.config import RunConfig
from distree.training.sizing import MIN_STEPS, SMALL_TEACHER, fit_to_data, steps, too_few_steps


def test_small_data_gets_smaller_batches_more_epochs_and_a_cheaper_teacher():
    sized, notes = fit_to_data(RunConfig(), 1300)
    for optim in (sized.teacher_optim, sized.student_optim):
        assert optim.batch_size == 64
        assert MIN_STEPS <= steps(optim, 1300) < MIN_STEPS + 21  # whole epochs of 21 batches
    assert sized.teacher == SMALL_TEACHER
    assert len(notes) == 3 and "WRN-16-2" in notes[0]
    assert too_few_steps(sized, 1300) == []


def test_large_data_keeps_the_defaults():
    assert fit_to_data(RunConfig(), 45_000) == (RunConfig(), [])


def test_fields_the_user_set_are_kept():
    cfg = RunConfig.model_validate(
        {"teacher": {"depth": 10, "width": 1}, "teacher_optim": {"epochs": 3}, "student_optim": {"batch_size": 16}}
    )
    sized, _ = fit_to_data(cfg, 1300)
    assert sized.teacher == cfg.teacher
    assert sized.teacher_optim.epochs == 3 and sized.teacher_optim.batch_size == 64
    assert sized.student_optim.batch_size == 16 and steps(sized.student_optim, 1300) >= MIN_STEPS
    # Sizing is stable: a resumed run sizes its config the same way.
    assert fit_to_data(cfg, 1300)[0] == sized


def test_a_schedule_too_short_to_learn_is_named_with_a_setting_to_try():
    cfg = RunConfig().with_epochs(3)
    cfg = cfg.model_copy(update={"teacher_optim": cfg.teacher_optim.model_copy(update={"batch_size": 128})})
    warnings = too_few_steps(cfg, 1300)
    assert len(warnings) == 2
    assert warnings[0].startswith("teacher: 33 optimizer steps (3 epochs of 11 batches of 128)")
    assert "try --epochs 137" in warnings[0]


def test_a_teacher_taken_from_another_run_is_not_warned_about():
    cfg = RunConfig().with_epochs(3)
    warnings = too_few_steps(cfg, 1300, teacher_trained=False)
    assert len(warnings) == 1 and warnings[0].startswith("student:")


def test_a_large_batch_recipe_learns_from_fewer_steps_but_not_fewer_images():
    fast = RunConfig.model_validate({"teacher_optim": {"epochs": 30, "batch_size": 1024}})
    assert steps(fast.teacher_optim, 45_000) < MIN_STEPS
    assert not any(w.startswith("teacher") for w in too_few_steps(fast, 45_000))
    short = RunConfig.model_validate({"teacher_optim": {"epochs": 4, "batch_size": 1024}})
    (warning,) = [w for w in too_few_steps(short, 45_000) if w.startswith("teacher")]
    assert "try --epochs 5" in warning  # 5 x 45,000 images pass MIN_SAMPLES


def test_one_epoch_of_a_large_set_at_a_large_batch_is_still_too_short():
    one = RunConfig.model_validate({"teacher_optim": {"epochs": 1, "batch_size": 1024}})
    (warning,) = [w for w in too_few_steps(one, 100_000) if w.startswith("teacher")]
    assert "98 optimizer steps" in warning and "try --epochs 1" not in warning
