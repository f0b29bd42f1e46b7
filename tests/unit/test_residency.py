"""Sizes and budgets from models.yaml, the estimate from a model directory, and the ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_serve.config import ConfigError, ModelConfig, ModelType, ServerConfig, parse_config_text
from mlx_serve.config.sizes import BudgetSpec, format_bytes, parse_budget, parse_size
from mlx_serve.residency import FootprintLedger, estimate_model, resolve_budget
from mlx_serve.residency.budget import AUTO_SHARE
from mlx_serve.residency.estimate import DEFAULT_OVERHEAD, DEFAULT_PLANNING_CONTEXT
from mlx_serve.tiny_models import build_text_model

GiB, MiB = 2**30, 2**20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * GiB),
        ("16GB", 16 * 10**9),
        ("512MiB", 512 * MiB),
        ("512M", 512 * MiB),
        ("1.5g", int(1.5 * GiB)),
        (" 300 MB ", 300 * 10**6),
        (4096, 4096),
        ("4096", 4096),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "-1GiB", "0", 0, True, "12 parsecs", "1e400GB"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


def test_budget_forms() -> None:
    assert parse_budget("auto") == BudgetSpec(auto=True)
    assert parse_budget("75%") == BudgetSpec(share=0.75)
    assert parse_budget("24GiB") == BudgetSpec(bytes=24 * GiB)
    assert parse_budget(None) is None
    for bad in ("0%", "150%", "x%"):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad)
    assert str(BudgetSpec(share=0.75)) == "75%"
    assert format_bytes(1536 * MiB) == "1.5 GiB"


def test_budget_in_yaml_with_line_numbers() -> None:
    cfg = parse_config_text("server:\n  memory_budget: 12GiB\nmodels: {}\n")
    assert cfg.server.memory_budget == BudgetSpec(bytes=12 * GiB)
    assert cfg.server.loaded_cap is None  # a budget alone: no count cap
    capped = parse_config_text("server:\n  memory_budget: 75%\n  max_loaded_models: 3\n")
    assert capped.server.loaded_cap == 3
    with pytest.raises(ConfigError) as caught:
        parse_config_text("server:\n  port: 8095\n  memory_budget: plenty\n")
    assert "line 3" in str(caught.value) and "memory_budget" in str(caught.value)
    # The dump (used to diff configs on reload) is plain text, as written.
    assert ServerConfig(memory_budget="75%").model_dump()["memory_budget"] == "75%"


def test_resolving_budgets() -> None:
    total = 32 * GiB
    assert resolve_budget(None, total_bytes=total) is None
    configured = resolve_budget(BudgetSpec(bytes=8 * GiB), total_bytes=total)
    assert configured is not None and configured.bytes == 8 * GiB
    half = resolve_budget(BudgetSpec(share=0.5), total_bytes=total)
    assert half is not None and half.bytes == 16 * GiB and "50%" in half.source
    auto = resolve_budget(BudgetSpec(auto=True), total_bytes=total, platform="linux")
    assert auto is not None and auto.bytes == int(total * AUTO_SHARE)
    assert "auto" in auto.source


def test_estimate_of_a_real_tiny_model(tmp_path: Path) -> None:
    root = build_text_model(tmp_path / "tiny", seed=1)
    config = json.loads((root / "config.json").read_text())
    weights = sum(p.stat().st_size for p in root.glob("*.safetensors"))
    est = estimate_model(ModelConfig(path=str(root)))
    # The headers' byte ranges: the files minus their JSON headers.
    assert est.weights_bytes is not None and 0.9 * weights < est.weights_bytes <= weights
    context = min(config.get("max_position_embeddings", DEFAULT_PLANNING_CONTEXT), 8192)
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim", config["hidden_size"] // heads)
    expected_kv = 2 * config["num_hidden_layers"] * kv_heads * head_dim * context * 4
    if config.get("torch_dtype", "float16") != "float32":
        expected_kv //= 2
    assert est.context_tokens == context
    assert est.kv_cache_bytes == expected_kv
    assert est.overhead_bytes == DEFAULT_OVERHEAD[ModelType.TEXT]
    assert est.total_bytes == est.weights_bytes + est.kv_cache_bytes + est.overhead_bytes
    # A bounded context shrinks the KV part; a learned overhead replaces the default.
    short = estimate_model(ModelConfig(path=str(root), context_length=512), 10 * MiB)
    assert short.kv_cache_bytes == expected_kv * 512 // context
    assert short.overhead_bytes == 10 * MiB
    flagged = estimate_model(ModelConfig(path=str(root), args={"max_kv_size": 256}))
    assert flagged.context_tokens == 256


def test_estimate_of_a_model_not_on_disk() -> None:
    est = estimate_model(ModelConfig(path="nobody/not-pulled-yet", type="embedding"))
    assert est.weights_bytes is None and est.kv_cache_bytes == 0
    assert est.total_bytes == DEFAULT_OVERHEAD[ModelType.EMBEDDING]


def test_ledger_round_trip_and_forgetting_a_changed_model(tmp_path: Path) -> None:
    path = tmp_path / "footprints.json"
    ledger = FootprintLedger(path)
    ledger.record_peak("m", path="/models/a", model_type="text", peak_bytes=300 * MiB)
    ledger.record_overhead("text", 200 * MiB)
    ledger.save()
    again = FootprintLedger(path)
    assert again.learned("m", path="/models/a", model_type="text") == 300 * MiB
    assert again.learned("m", path="/models/b", model_type="text") is None  # path changed
    assert again.overhead("text") == 200 * MiB


def test_ledger_survives_garbage_and_an_unwritable_dir(tmp_path: Path) -> None:
    path = tmp_path / "footprints.json"
    path.write_text("{not json")
    ledger = FootprintLedger(path)
    assert ledger.learned("m", path="x", model_type="text") is None
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    stuck = FootprintLedger(blocked / "footprints.json")
    stuck.record_peak("m", path="x", model_type="text", peak_bytes=1)
    stuck.save()  # warns once, raises nothing
    stuck.save()
