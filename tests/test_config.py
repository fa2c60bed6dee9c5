import pytest

from distree.config import ConfigError, RunConfig, StudentConfig, WideResNetConfig, load_run_config


def test_defaults_are_valid():
    cfg = RunConfig()
    assert cfg.student.exit_points == [1, 2, 3]
    assert len(cfg.student.branches) == 4


def test_unknown_field_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("student:\n  embed_dims: 3\n")
    with pytest.raises(ConfigError, match="student.embed_dims"):
        load_run_config(p)


def test_bad_value_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("teacher_optim: {lr: -1}\n")
    with pytest.raises(ConfigError, match="teacher_optim.lr"):
        load_run_config(p)


def test_bad_depth_and_exits():
    with pytest.raises(ValueError, match="6n\\+4"):
        WideResNetConfig(depth=12)
    with pytest.raises(ValueError, match="exit_points"):
        StudentConfig(branches=[WideResNetConfig(depth=16)], exit_points=[2, 4])
    with pytest.raises(ValueError, match="same number of blocks"):
        StudentConfig(branches=[WideResNetConfig(depth=16), WideResNetConfig(depth=10)])
    assert StudentConfig(branches=[WideResNetConfig(depth=16)], exit_points=[1, 3, 6]).exit_points == [1, 3, 6]


def test_exit_points_default_and_earlier_name():
    """Unset, the exit points are the group ends; run files written under the earlier
    name (exits, null for the default) still load, and are written back as exit_points."""
    wrn16 = [{"depth": 16}]
    assert StudentConfig(branches=wrn16).exit_points == [2, 4, 6]
    assert StudentConfig.model_validate({"branches": wrn16, "exits": None}).exit_points == [2, 4, 6]
    old = StudentConfig.model_validate({"branches": wrn16, "exits": [1, 6]})
    assert old.exit_points == [1, 6] and "exits" not in old.model_dump()
    with pytest.raises(ValueError, match="exits"):  # both names at once is a typo somewhere
        StudentConfig.model_validate({"branches": wrn16, "exits": [1, 6], "exit_points": [1, 6]})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "nope.yaml")


def test_set_overrides_fields_and_leaves_the_rest_unset(tmp_path):
    from distree.config import load_run_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("student: {embed_dim: 32}\n")
    c = load_run_config(cfg, ["student.embed_dim=64", "data.crop_padding=2", "distill.temperature=2"])
    assert c.student.embed_dim == 64 and c.data.crop_padding == 2 and c.distill.temperature == 2
    assert "teacher_optim" not in c.model_fields_set  # still unset: sized to the data set later


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("student.embed_dimm=64", "embed_dimm"),
        ("student.embed_dim=zero", "embed_dim"),
        ("student", "KEY=VALUE"),
        ("data.crop_padding.x=1", "is a value"),
    ],
)
def test_a_bad_set_is_named(assignment, message):
    from distree.config import ConfigError, load_run_config

    with pytest.raises(ConfigError, match=message):
        load_run_config(None, ["data.crop_padding=1", assignment])
