from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from mmvid.config import ConfigError, config_from_dict, config_to_dict, load_config, parse_config, save_config


@dataclass
class OptimConfig:
    lr: float = 3e-4
    betas: tuple[float, ...] = (0.9, 0.95)
    warmup_steps: int = 100

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class ModelConfig:
    hidden_size: int = 32
    intermediate_size: int | None = None  # None: 4 * hidden_size

    def __post_init__(self):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size


@dataclass
class TrainConfig:
    name: str = "debug"
    steps: int = 10
    bf16: bool = False
    grad_clip: float = 1.0
    seed: Optional[int] = None
    precision: Literal["fp32", "bf16"] = "fp32"
    stages: list[str] = field(default_factory=lambda: ["warmup", "main"])
    size: tuple[int, int] = (16, 16)
    loss_weights: dict[str, float] = field(default_factory=lambda: {"l1": 1.0})
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    eval_optim: OptimConfig | None = None


@dataclass
class CustomDefaultConfig:
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3))


@dataclass
class RequiredConfig:
    data: str
    steps: int = 1


def _yaml(tmp_path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults():
    assert load_config(TrainConfig) == TrainConfig()
    assert load_config(TrainConfig).model.intermediate_size == 128


def test_yaml_over_defaults_and_overrides_over_yaml(tmp_path):
    path = _yaml(tmp_path, "steps: 50\nname: from_yaml\noptim:\n  lr: 1e-3\n  warmup_steps: 7\n")
    cfg = load_config(TrainConfig, path)
    assert (cfg.steps, cfg.name, cfg.optim.lr, cfg.optim.warmup_steps) == (50, "from_yaml", 1e-3, 7)
    assert cfg.optim.betas == (0.9, 0.95) and cfg.grad_clip == 1.0  # untouched keys keep their defaults
    cfg = load_config(TrainConfig, path, ["steps=60", "optim.lr=2e-3", "steps=70"])
    assert (cfg.steps, cfg.name, cfg.optim.lr, cfg.optim.warmup_steps) == (70, "from_yaml", 2e-3, 7)


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(TrainConfig, _yaml(tmp_path, "")) == TrainConfig()


def test_nested_sections_rebuild_and_run_post_init():
    cfg = load_config(TrainConfig, overrides=["model.hidden_size=8"])
    assert cfg.model.intermediate_size == 32  # derived again from the new hidden_size
    assert load_config(TrainConfig, overrides=["eval_optim.lr=0.5"]).eval_optim == OptimConfig(lr=0.5)
    assert load_config(TrainConfig, overrides=["eval_optim.lr=0.5", "eval_optim=null"]).eval_optim is None
    # A parent's own default for a section is the base its keys are set over.
    cfg = load_config(CustomDefaultConfig, overrides=["optim.warmup_steps=1"])
    assert (cfg.optim.lr, cfg.optim.warmup_steps) == (1e-3, 1)


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("steps=3", "steps", 3),
        ("grad_clip=1e-4", "grad_clip", 1e-4),
        ("grad_clip=0.1", "grad_clip", 0.1),
        ("grad_clip=3", "grad_clip", 3.0),
        ("bf16=true", "bf16", True),
        ("bf16=YES", "bf16", True),
        ("bf16=1", "bf16", True),
        ("bf16=False", "bf16", False),
        ("bf16=no", "bf16", False),
        ("bf16=0", "bf16", False),
        ("name=null", "name", "null"),  # a plain str cannot be None: kept as is
        ("name=a b=c", "name", "a b=c"),
        ("seed=7", "seed", 7),
        ("seed=null", "seed", None),
        ("seed=None", "seed", None),
        ("seed=~", "seed", None),
        ("precision=bf16", "precision", "bf16"),
        ("stages=a,b,c", "stages", ["a", "b", "c"]),
        ("stages=[x, y]", "stages", ["x", "y"]),
        ("stages=", "stages", []),
        ("size=32,48", "size", (32, 48)),
        ("size=[8, 4]", "size", (8, 4)),
        ("optim.betas=0.8,0.9,0.99", "optim.betas", (0.8, 0.9, 0.99)),
        ("loss_weights={l1: 2, lpips: 0.5}", "loss_weights", {"l1": 2.0, "lpips": 0.5}),
    ],
)
def test_override_coercion(override, key, expected):
    value = load_config(TrainConfig, overrides=[override])
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    "override, message",
    [
        ("steps=3.5", "steps: expected int, got '3.5'"),
        ("steps=abc", "steps: expected int"),
        ("grad_clip=fast", "grad_clip: expected float, got 'fast'"),
        ("bf16=maybe", "bf16: expected bool, got 'maybe'"),
        ("seed=x", "seed: expected int | None"),
        ("precision=fp16", "precision: expected one of ['fp32', 'bf16'], got 'fp16'"),
        ("size=1,2,3", "size: expected 2 items"),
        ("size=1,x", "size[1]: expected int, got 'x'"),
        ("optim.betas=0.9,b", "optim.betas[1]: expected float, got 'b'"),
        ("loss_weights={l1: x}", "loss_weights.l1: expected float"),
        ("loss_weights=l1", "loss_weights: expected dict[str, float]"),
        ("stages=[a, b", "stages: cannot parse"),
        ("optim=fast", "optim: expected a mapping of OptimConfig keys"),
        ("loss_weights.l1.a=2", "'loss_weights' is not a config section"),
        ("loss_weights.l2=x", "loss_weights.l2: expected float"),
    ],
)
def test_bad_override_values(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(TrainConfig, overrides=[override])
    assert message in str(info.value)


def test_one_key_of_a_mapping_merges_into_it(tmp_path):
    cfg = load_config(TrainConfig, overrides=["loss_weights.l2=0.5"])
    assert cfg.loss_weights == {"l1": 1.0, "l2": 0.5}  # the default's keys stay
    path = _yaml(tmp_path, "loss_weights: {l1: 3.0, ssim: 1.0}")
    cfg = load_config(TrainConfig, path, ["loss_weights.l1=2", "loss_weights.lpips=1e-1"])
    assert cfg.loss_weights == {"l1": 2.0, "ssim": 1.0, "lpips": 0.1}
    cfg = load_config(TrainConfig, overrides=["loss_weights={l1: 3}", "loss_weights.l2=1"])
    assert cfg.loss_weights == {"l1": 3.0, "l2": 1.0}


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TrainConfig, overrides=["steps"])


def test_unknown_keys_name_the_dotted_key_and_suggest(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, overrides=["stepz=3"])
    assert "unknown key 'stepz'" in str(info.value) and "did you mean 'steps'?" in str(info.value)
    assert "valid keys at the top level: name, steps," in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, overrides=["optim.lrr=3"])
    assert "unknown key 'optim.lrr'" in str(info.value) and "did you mean 'optim.lr'?" in str(info.value)
    assert "valid keys under 'optim': lr, betas, warmup_steps" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, _yaml(tmp_path, "model:\n  hiden_size: 8\n"))
    assert "unknown key 'model.hiden_size' (did you mean 'model.hidden_size'?)" in str(info.value)
    with pytest.raises(ConfigError, match="unknown key 'zzz'; valid keys"):  # nothing close: no suggestion
        load_config(TrainConfig, _yaml(tmp_path, "zzz: 1\n"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("steps: 1.5", "steps: expected int, got 1.5"),
        ("steps: true", "steps: expected int, got True"),  # a bool is not an int
        ("steps: ten", "steps: expected int, got 'ten'"),
        ("bf16: 1", "bf16: expected bool, got 1"),
        ("name: 3", "name: expected str, got 3"),
        ("precision: fp16", "precision: expected one of ['fp32', 'bf16']"),
        ("optim: 3", "optim: expected a mapping of OptimConfig keys, got 3"),
        ("optim:\n  betas: 0.9", "optim.betas: expected tuple[float, ...], got 0.9"),
        ("stages: [a, 2]", "stages[1]: expected str, got 2"),
        ("model:\n  intermediate_size: big", "model.intermediate_size: expected int | None, got 'big'"),
    ],
)
def test_wrong_types_from_yaml(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, _yaml(tmp_path, text + "\n"))
    assert message in str(info.value)


def test_yaml_values_that_convert(tmp_path):
    text = "grad_clip: 2\nsteps: '12'\noptim:\n  lr: 1e-4\n  betas: [0.5, 1]\nseed: null\nsize: [4, 4]\n"
    cfg = load_config(TrainConfig, _yaml(tmp_path, text))
    assert cfg.grad_clip == 2.0 and type(cfg.grad_clip) is float
    assert cfg.steps == 12 and cfg.optim.lr == 1e-4  # YAML 1.1 reads `1e-4` as a string
    assert cfg.optim.betas == (0.5, 1.0) and cfg.size == (4, 4) and cfg.seed is None


def test_type_errors_come_before_any_post_init(tmp_path):
    # optim.lr would fail __post_init__, but the bad `steps` is reported first.
    with pytest.raises(ConfigError, match="steps: expected int"):
        load_config(TrainConfig, overrides=["optim.lr=-1", "steps=x"])


def test_post_init_errors_surface():
    with pytest.raises(ConfigError, match="optim: lr must be positive, got -1.0"):
        load_config(TrainConfig, overrides=["optim.lr=-1"])
    with pytest.raises(ValueError, match="lr must be positive"):
        config_from_dict(OptimConfig, {"lr": 0})


def test_yaml_file_problems(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(TrainConfig, _yaml(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(TrainConfig, _yaml(tmp_path, "steps: [1\n"))


def test_required_fields():
    assert config_from_dict(RequiredConfig, {"data": "x.json"}) == RequiredConfig("x.json")
    with pytest.raises(ConfigError, match="missing required key 'data'"):
        config_from_dict(RequiredConfig, {})


def test_save_load_round_trip(tmp_path):
    overrides = ["name=yes", "seed=3", "optim.betas=0.1,0.2", "eval_optim.lr=1e-10", "model.hidden_size=8"]
    cfg = load_config(TrainConfig, overrides=overrides + ["stages="])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert load_config(TrainConfig, path) == cfg
    assert config_from_dict(TrainConfig, config_to_dict(cfg)) == cfg
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]  # no temporary file left
    plain = config_to_dict(cfg)
    assert plain["optim"]["betas"] == [0.1, 0.2] and plain["size"] == [16, 16]
    assert plain["model"]["intermediate_size"] == 32


def test_config_from_dict_does_not_modify_its_input():
    data = {"optim": {"lr": 0.5}, "stages": ["a"]}
    config_from_dict(TrainConfig, data)
    assert data == {"optim": {"lr": 0.5}, "stages": ["a"]}


def test_parse_config(tmp_path):
    path = _yaml(tmp_path, "steps: 5\noptim:\n  lr: 0.01\n")
    cfg = parse_config(TrainConfig, ["--config", str(path), "steps=6", "bf16=true"])
    assert (cfg.steps, cfg.optim.lr, cfg.bf16) == (6, 0.01, True)
    assert parse_config(TrainConfig, [f"--config={path}"]).steps == 5
    assert parse_config(TrainConfig, []) == TrainConfig()


def test_parse_config_help(capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(TrainConfig, ["steps=3", "--help"], description="Train a thing.")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "Train a thing." in out and "[--config FILE] [key=value ...]" in out
    rows = dict(line.strip().split(maxsplit=1) for line in out.splitlines() if line.startswith("  "))
    assert rows["steps"] == "int = 10" and rows["optim.lr"] == "float = 0.0003"
    assert rows["optim.betas"] == "tuple[float, ...] = [0.9, 0.95]"
    assert rows["precision"] == "one of ['fp32', 'bf16'] = 'fp32'"
    assert rows["eval_optim"] == "OptimConfig | None = None" and rows["eval_optim.lr"] == "float = 0.0003"
    assert "optim" not in rows  # a section is listed by its keys


@pytest.mark.parametrize(
    "argv, message",
    [
        (["steps=x"], "steps: expected int"),
        (["nope=1"], "unknown key 'nope'"),
        (["steps"], "key=value"),
        (["--config"], "--config needs a file"),
        (["--config", "missing.yaml"], "missing.yaml"),
        (["--verbose"], "unknown option '--verbose'"),
        (["optim.lr=-1"], "lr must be positive"),
    ],
)
def test_parse_config_bad_input_exits_2(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        parse_config(TrainConfig, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
