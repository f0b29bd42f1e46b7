"""Unit tests for mlx_serve.config: schema defaults, durations, error positions, legacy format."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from mlx_serve.config import (
    DEFAULT_PORT,
    Config,
    ConfigError,
    ModelConfig,
    ModelType,
    ServerConfig,
    example_config_text,
    find_config_path,
    load_config,
    parse_config_text,
    parse_duration,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, text: str) -> tuple[ConfigError, Path]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value, path


# --- defaults -----------------------------------------------------------------------------


def test_server_defaults() -> None:
    server = ServerConfig()
    assert server.host == "127.0.0.1"
    assert server.port == DEFAULT_PORT == 8095
    assert server.idle_timeout == 600
    assert server.max_loaded_models is None
    assert server.loaded_cap == 1  # one at a time unless a budget or a cap says otherwise
    assert server.memory_budget is None
    assert server.startup_timeout == 120
    assert server.stop_timeout == 10
    assert server.queue_limit == 256
    assert server.max_concurrency == 8
    assert server.fair_wait == 10
    assert server.fair_requests == 32
    assert server.data_dir is None
    assert server.api_key is None


def test_model_defaults() -> None:
    model = ModelConfig(path="mlx-community/Qwen2.5-0.5B-Instruct-4bit")
    assert model.type is ModelType.TEXT
    assert model.path == "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    assert model.idle_timeout is None
    assert model.max_kv_cache_size is None
    assert model.context_length is None
    assert model.aliases == []
    assert model.preload is False
    assert model.defaults == {}
    assert model.args == {}
    assert model.max_concurrency is None


def test_config_defaults_and_extra_attributes() -> None:
    cfg = Config()
    assert cfg.server == ServerConfig()
    assert cfg.models == {}
    assert cfg.source is None
    assert cfg.notices == []


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "~\n", "models:\nserver:\n"])
def test_empty_config_is_defaults(text: str) -> None:
    cfg = parse_config_text(text)
    assert cfg.server == ServerConfig()
    assert cfg.models == {}


def test_model_type_values() -> None:
    assert [t.value for t in ModelType] == ["text", "vision", "embedding", "tts", "stt", "rerank"]
    assert ModelType("tts") == "tts"


# --- durations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("1h30m", 5400),
        ("1h", 3600),
        ("2d", 172800),
        ("500ms", 0.5),
        ("1m30s500ms", 90.5),
        ("1.5h", 5400),
        (" 45s ", 45),
        ("-1s", -1),
        ("-1", -1),
        ("90", 90),
        ("2.5", 2.5),
        (90, 90),
        (2.5, 2.5),
        (-1, -1),
        (0, 0),
    ],
)
def test_parse_duration_valid(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    "value",
    ["", "abc", "10x", "1h30", "h", "s10", "1 h", "--1", "1.2.3s", True, None, [1], math.nan],
)
def test_parse_duration_invalid(value: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


def test_parse_duration_rejects_infinity() -> None:
    with pytest.raises(ValueError, match=r"use e\.g\. 30s, 10m, 1h30m or seconds"):
        parse_duration(math.inf)


def test_duration_fields_accept_strings() -> None:
    server = ServerConfig(idle_timeout="1h30m", startup_timeout="2m", fair_wait="0s")
    assert (server.idle_timeout, server.startup_timeout, server.fair_wait) == (5400, 120, 0)
    assert ModelConfig(path="a/b", idle_timeout="-1").idle_timeout == -1


@pytest.mark.parametrize("field", ["startup_timeout", "stop_timeout"])
def test_positive_durations(field: str) -> None:
    with pytest.raises(ValidationError):
        ServerConfig.model_validate({field: 0})


# --- error positions ----------------------------------------------------------------------


def test_unknown_key_reports_file_line_and_key(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "server:\n  port: 9000\n  prot: 9001\n")
    assert error.path == path
    assert error.line == 3
    assert error.key == "server.prot"
    assert "unknown key" in error.message
    assert str(error) == f"{path}:3: server.prot: unknown key (did you mean port?)"


def test_unknown_model_key_reports_its_own_line(tmp_path: Path) -> None:
    text = "models:\n  foo:\n    path: a/b\n    preload: true\n    aliass: [x]\n"
    error, _ = load_error(tmp_path, text)
    assert (error.line, error.key) == (5, "models.foo.aliass")
    assert "did you mean aliases?" in error.message


def test_top_level_server_key_hints_at_server_section() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("host: 0.0.0.0\n")
    assert (info.value.line, info.value.key) == (1, "host")
    assert "server.host" in info.value.message


def test_wrong_type_reports_line(tmp_path: Path) -> None:
    error, path = load_error(tmp_path, "# comment\nserver:\n  port: abc\n")
    assert (error.line, error.key) == (3, "server.port")
    assert str(error).startswith(f"{path}:3: server.port: ")
    assert "'abc'" in str(error)


def test_invalid_duration_message(tmp_path: Path) -> None:
    text = "models:\n  foo:\n    path: a/b\n    idle_timeout: abc\n"
    error, path = load_error(tmp_path, text)
    assert str(error) == (
        f"{path}:4: models.foo.idle_timeout: invalid duration 'abc' "
        "(use e.g. 30s, 10m, 1h30m or seconds)"
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("server:\n  port: 0\n", "server.port"),
        ("server:\n  port: 70000\n", "server.port"),
        ("server:\n  max_loaded_models: 0\n", "server.max_loaded_models"),
        ("server:\n  max_loaded_models: true\n", "server.max_loaded_models"),
        ("server:\n  queue_limit: 1.5\n", "server.queue_limit"),
        ("server:\n  fair_wait: -1\n", "server.fair_wait"),
        ("server:\n  fair_requests: 0\n", "server.fair_requests"),
        ("server:\n  stop_timeout: 0s\n", "server.stop_timeout"),
        ("server:\n  max_concurrency: 0\n", "server.max_concurrency"),
        ("server: 5\n", "server"),
    ],
)
def test_out_of_range_values(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    assert info.value.key == key
    assert info.value.line == text.count("\n")


@pytest.mark.parametrize("field", ["max_kv_cache_size", "context_length", "max_concurrency"])
def test_model_positive_ints(field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(f"models:\n  m:\n    path: a/b\n    {field}: 0\n")
    assert (info.value.line, info.value.key) == (4, f"models.m.{field}")


def test_missing_path_points_at_the_model() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("models:\n  foo:\n    type: text\n")
    assert (info.value.line, info.value.key) == (2, "models.foo.path")
    assert "missing" in info.value.message


def test_bad_model_type_lists_choices() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("models:\n  m:\n    path: a/b\n    type: chat\n")
    assert (info.value.line, info.value.key) == (4, "models.m.type")
    assert "'embedding'" in info.value.message


def test_all_problems_reported_first_is_topmost(tmp_path: Path) -> None:
    text = (
        "models:\n"
        "  m:\n"
        "    path: a/b\n"
        "    context_length: lots\n"
        "server:\n"
        "  port: -5\n"
        "  idle_timeout: soon\n"
    )
    error, path = load_error(tmp_path, text)
    lines = str(error).splitlines()
    assert len(lines) == 3
    assert [issue.line for issue in error.issues] == [4, 6, 7]
    assert (error.line, error.key) == (4, "models.m.context_length")
    assert all(line.startswith(f"{path}:") for line in lines)


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("server:\n  port: 1\n bad: [\n")
    assert info.value.line == 3
    assert "invalid YAML" in info.value.message
    # In plain words (tests/unit/test_yaml_errors.py has the rest); PyYAML's as the detail.
    assert "'bad' is indented 1 space but 'port' (line 2) is indented 2" in info.value.message
    assert info.value.detail is not None and "expected <block end>" in info.value.detail


def test_tab_indentation_is_a_yaml_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("server:\n\tport: 1\n")
    assert info.value.line == 2
    assert "a tab character is not allowed for indentation" in info.value.message


def test_duplicate_yaml_key_reported() -> None:
    text = "models:\n  a:\n    path: x/y\n  b:\n    path: x/z\n  a:\n    path: x/w\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    assert (info.value.line, info.value.key) == (6, "models.a")
    assert "duplicate key 'a'" in info.value.message
    assert "line 2" in info.value.message


def test_duplicate_nested_yaml_key_reported() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("server:\n  port: 1\n  host: a\n  port: 2\n")
    assert (info.value.line, info.value.key) == (4, "server.port")


def test_yaml_merge_keys_are_not_duplicates() -> None:
    text = (
        "common: &common\n  type: text\n  preload: false\n"
        "models:\n  a:\n    <<: *common\n    path: x/y\n    preload: true\n"
    )
    # "common" is not a config key, so this must still fail - but on that key, not on a
    # duplicate "preload".
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    assert (info.value.line, info.value.key) == (1, "common")


def test_top_level_must_be_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("- a\n- b\n")
    assert info.value.line == 1
    assert "mapping" in info.value.message


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.path == path
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_config_error_without_file_or_line() -> None:
    assert str(ConfigError("boom")) == "boom"
    assert str(ConfigError("boom", line=3, key="a.b")) == "line 3: a.b: boom"


def test_config_error_pickles(tmp_path: Path) -> None:
    error, _ = load_error(tmp_path, "server:\n  prot: 1\n  hots: x\n")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert (copy.line, copy.key, copy.path) == (error.line, error.key, error.path)


# --- names and aliases --------------------------------------------------------------------


def test_names_may_contain_slash_colon_dot() -> None:
    text = "models:\n  mlx-community/Foo:\n    path: a/b\n  llama3.2:8b:\n    path: a/c\n"
    cfg = parse_config_text(text)
    assert set(cfg.models) == {"mlx-community/Foo", "llama3.2:8b"}


@pytest.mark.parametrize("name", ["'a b'", "''", '"a\\tb"', '"a\\x07"'])
def test_bad_model_names(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(f"models:\n  {name}:\n    path: a/b\n")
    assert info.value.line == 2


def test_bad_alias_name() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(
            "models:\n  m:\n    path: a/b\n    aliases:\n      - ok\n      - 'no way'\n"
        )
    assert (info.value.line, info.value.key) == (6, "models.m.aliases[1]")


def test_alias_equal_to_other_model_name() -> None:
    text = "models:\n  a:\n    path: x/y\n  b:\n    path: x/z\n    aliases: [a]\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    assert (info.value.line, info.value.key) == (6, "models.b.aliases[0]")
    assert "'a'" in info.value.message


def test_alias_equal_to_other_models_alias() -> None:
    text = (
        "models:\n"
        "  a:\n    path: x/y\n    aliases: [fast]\n"
        "  b:\n    path: x/z\n    aliases:\n      - other\n      - fast\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    assert (info.value.line, info.value.key) == (9, "models.b.aliases[1]")
    assert "alias of model 'a'" in info.value.message


def test_aliases_are_case_sensitive_and_may_repeat_own_name() -> None:
    text = "models:\n  a:\n    path: x/y\n    aliases: [A, a, x, x]\n  b:\n    path: x/z\n"
    cfg = parse_config_text(text)
    assert cfg.resolve("A") == "a"
    assert cfg.resolve("x") == "a"


def test_conflicts_also_checked_when_built_in_code() -> None:
    with pytest.raises(ValidationError, match="alias 'a'"):
        Config(models={"a": ModelConfig(path="x/y"), "b": ModelConfig(path="x/z", aliases=["a"])})


def test_resolve_and_names_and_aliases() -> None:
    text = (
        "models:\n"
        "  qwen:\n    path: a/b\n    aliases: [default, q]\n"
        "  whisper:\n    type: stt\n    path: a/c\n    aliases: whisper-1\n"
    )
    cfg = parse_config_text(text)
    assert cfg.resolve("qwen") == "qwen"
    assert cfg.resolve("q") == "qwen"
    assert cfg.resolve("whisper-1") == "whisper"
    assert cfg.resolve("Q") is None
    assert cfg.names_and_aliases() == {
        "qwen": "qwen",
        "default": "qwen",
        "q": "qwen",
        "whisper": "whisper",
        "whisper-1": "whisper",
    }


# --- model fields -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("lm", ModelType.TEXT),
        ("LLM", ModelType.TEXT),
        ("vlm", ModelType.VISION),
        ("embeddings", ModelType.EMBEDDING),
        ("whisper", ModelType.STT),
        ("tts", ModelType.TTS),
    ],
)
def test_type_synonyms(written: str, expected: ModelType) -> None:
    cfg = parse_config_text(f"models:\n  m:\n    path: a/b\n    type: {written}\n")
    assert cfg.models["m"].type is expected


def test_args_forms() -> None:
    text = (
        "models:\n"
        "  a:\n    path: x/y\n    args: {trust-remote-code: true, max-tokens: 10, x: null}\n"
        "  b:\n    path: x/z\n    args: ['--max-tokens', 100, '--temp', 0.5]\n"
    )
    cfg = parse_config_text(text)
    assert cfg.models["a"].args == {"trust-remote-code": True, "max-tokens": 10, "x": None}
    assert cfg.models["b"].args == ["--max-tokens", "100", "--temp", "0.5"]


@pytest.mark.parametrize("args", ["5", "{x: [1]}", "[[1]]", "{x: {y: 1}}"])
def test_bad_args(args: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text(f"models:\n  m:\n    path: a/b\n    args: {args}\n")
    assert (info.value.line, info.value.key) == (4, "models.m.args")
    assert len(info.value.issues) == 1


def test_defaults_are_free_form() -> None:
    text = "models:\n  m:\n    path: a/b\n    defaults:\n      temperature: 0.2\n      stop: [x]\n"
    cfg = parse_config_text(text)
    assert cfg.models["m"].defaults == {"temperature": 0.2, "stop": ["x"]}


def test_api_key_and_data_dir(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  api_key: secret\n  data_dir: state\n")
    cfg = load_config(path)
    assert cfg.server.api_key == "secret"
    assert cfg.server.data_dir == tmp_path / "state"
    assert parse_config_text("server:\n  api_key: ''\n").server.api_key is None


# --- model paths --------------------------------------------------------------------------


def test_repo_id_kept_as_is(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "models:\n  m:\n    path: mlx-community/Foo-4bit\n"))
    assert cfg.models["m"].path == "mlx-community/Foo-4bit"


@pytest.mark.parametrize("written", ["./weights", "../nowhere", "/definitely/not/here", "~/nope"])
def test_missing_local_path(tmp_path: Path, written: str) -> None:
    error, _ = load_error(tmp_path, f"models:\n  m:\n    type: text\n    path: {written}\n")
    assert (error.line, error.key) == (4, "models.m.path")
    assert "does not exist" in error.message


def test_relative_path_resolved_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "conf"
    (config_dir / "weights").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = (
        "models:\n  a:\n    path: ./weights\n  b:\n    path: ../shared\n  c:\n    path: weights\n"
    )
    cfg = load_config(write(config_dir, text))
    assert cfg.models["a"].path == str(config_dir / "weights")
    assert cfg.models["b"].path == str(tmp_path / "shared")
    # An existing relative directory is local even without "./".
    assert cfg.models["c"].path == str(config_dir / "weights")


def test_home_path_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "foo").mkdir(parents=True)
    cfg = parse_config_text("models:\n  m:\n    path: ~/models/foo\n")
    assert cfg.models["m"].path == str(tmp_path / "models" / "foo")


def test_local_path_must_be_directory(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    error, _ = load_error(tmp_path, "models:\n  m:\n    path: ./weights.bin\n")
    assert "not a directory" in error.message


# --- legacy 0.3.0 format ------------------------------------------------------------------

LEGACY = """\
manager_port: 9000
mlx_port: 8081
inactivity_timeout_seconds: 300
startup_timeout_seconds: 60
models:
  - name: qwen
    type: lm
    hf_path: mlx-community/Qwen2.5-0.5B-Instruct-4bit
    context_length: 4096
    max_kv_cache_size: 2048
    extra_body:
      temperature: 0.1
  - name: vl
    type: vlm
    hf_path: mlx-community/Qwen2-VL-2B-Instruct-4bit
  - name: embed
    type: embeddings
    hf_path: mlx-community/all-MiniLM-L6-v2-4bit
  - name: whisper
    type: whisper
    hf_path: mlx-community/whisper-large-v3-turbo
"""


def test_legacy_format_mapped_with_notice(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, LEGACY))
    assert cfg.server.port == 9000
    assert cfg.server.idle_timeout == 300
    assert cfg.server.startup_timeout == 60
    assert cfg.server.loaded_cap == 1  # a 0.3.0 config keeps one model at a time
    assert list(cfg.models) == ["qwen", "vl", "embed", "whisper"]
    qwen = cfg.models["qwen"]
    assert qwen.type is ModelType.TEXT
    assert qwen.path == "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
    assert (qwen.context_length, qwen.max_kv_cache_size) == (4096, 2048)
    assert qwen.defaults == {"temperature": 0.1}
    assert [m.type for m in cfg.models.values()] == [
        ModelType.TEXT,
        ModelType.VISION,
        ModelType.EMBEDDING,
        ModelType.STT,
    ]
    assert any("0.3.0" in notice and "mlx-serve init --print" in notice for notice in cfg.notices)
    assert any("mlx_port" in notice for notice in cfg.notices)


def test_legacy_detected_by_top_level_key_alone() -> None:
    cfg = parse_config_text("manager_port: 9001\nhost: 0.0.0.0\n")
    assert (cfg.server.port, cfg.server.host) == (9001, "0.0.0.0")
    assert cfg.notices


def test_legacy_unknown_key_reports_line() -> None:
    text = "models:\n  - name: a\n    hf_path: x/y\n    temprature: 1\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    assert (info.value.line, info.value.key) == (4, "models[0].temprature")
    assert "unknown key" in info.value.message


def test_legacy_value_error_reports_original_key() -> None:
    text = "manager_port: 9000\nmodels:\n  - name: a\n    hf_path: x/y\n    extra_body: 5\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    assert (info.value.line, info.value.key) == (5, "models[0].extra_body")


def test_legacy_entry_problems() -> None:
    text = "models:\n  - name: a\n    type: lm\n  - type: lm\n  - name: a\n    hf_path: x/y\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text)
    messages = [(issue.line, issue.message) for issue in info.value.issues]
    assert messages[0] == (2, "missing hf_path")
    assert messages[1] == (4, "missing name")
    assert messages[2][0] == 5
    assert "duplicate model name 'a'" in messages[2][1]


def test_legacy_conflicting_keys() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config_text("manager_port: 1\nserver:\n  port: 2\n")
    assert (info.value.line, info.value.key) == (1, "manager_port")


# --- discovery and the shipped example ----------------------------------------------------


def test_find_config_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLX_SERVE_CONFIG", raising=False)
    assert find_config_path(None) == tmp_path / "home" / ".mlx-serve" / "models.yaml"

    monkeypatch.setenv("MLX_SERVE_CONFIG", str(tmp_path / "env.yaml"))
    assert find_config_path(None) == tmp_path / "env.yaml"

    assert find_config_path(tmp_path / "explicit.yaml") == tmp_path / "explicit.yaml"
    assert find_config_path(Path("~/x.yaml")) == tmp_path / "home" / "x.yaml"

    monkeypatch.setenv("MLX_SERVE_CONFIG", "")
    assert find_config_path(None) == tmp_path / "home" / ".mlx-serve" / "models.yaml"


def test_shipped_example_matches_packaged_copy() -> None:
    shipped = (REPO_ROOT / "models.yaml").read_text(encoding="utf-8")
    assert shipped == example_config_text()


def test_example_parses_with_default_server_settings() -> None:
    cfg = parse_config_text(example_config_text())
    assert cfg.server == ServerConfig()
    assert cfg.notices == []
    assert {m.type for m in cfg.models.values()} == set(ModelType)
    assert cfg.resolve("default") is not None


def test_example_documents_every_option() -> None:
    text = example_config_text()
    for field in [*ServerConfig.model_fields, *ModelConfig.model_fields]:
        assert f"{field}:" in text, f"{field} is not documented in the example config"


def test_load_sets_source(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  m:\n    path: a/b\n")
    cfg = load_config(path)
    assert cfg.source == path
    assert parse_config_text("").source is None


@pytest.mark.parametrize("value", [10**400, "9" * 400, "9" * 400 + "s", float("inf")])
def test_durations_too_large_to_represent_are_errors(value: object) -> None:
    # Regression (review): a 400-digit keep_alive raised OverflowError (a 500) or became
    # infinity (a model that never unloads, and "Infinity" in JSON answers).
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)
