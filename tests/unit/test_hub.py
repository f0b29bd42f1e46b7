"""mlx_serve.hub without downloads: validation, show, size estimates, deletion, the fake hub.

Cached repos are laid out by hand exactly as huggingface_hub does (blobs, snapshot symlinks,
refs), so nothing here starts a process or needs the network.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from mlx_serve.hub import (
    DiskFull,
    HubError,
    HubOffline,
    InvalidRepoId,
    InvalidRevision,
    NotAModelDir,
    NotCached,
    PathNotFound,
    delete_cached,
    delete_local,
    estimated_size_bytes,
    hub_cache_dir,
    pull,
    show,
    validate_repo_id,
    validate_revision,
)
from mlx_serve.hub.download import ChecksumError, classify
from mlx_serve.hub.info import safetensors_header
from mlx_serve.testing.fake_hub import FakeHub
from mlx_serve.tiny_models import build_text_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"

TRAVERSAL_IDS = ["../x", "..", "/etc", "/etc/passwd", "a/../../b", "a/b/../c", "~/x", "./x"]
BAD_IDS = [
    *TRAVERSAL_IDS,
    "",
    "gpt2",  # mlx-serve wants the namespace spelled out
    "a/b/c",
    "a//b",
    "org/na me",
    "org/ná",
    "org/-x",
    "org/x-",
    "org/.x",
    "org--x/y",
    "org/x..y",
    "org/x\x00",
    "C:\\models\\x",
    "org/" + "x" * 100,
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("hub-unit") / "tiny", seed=1)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache that the code under test finds through HF_HUB_CACHE."""
    path = tmp_path / "hf-cache"
    path.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(path))
    return path


def write_safetensors(path: Path, tensors: Mapping[str, tuple[str, list[int]]]) -> None:
    """A safetensors file with zeroed data and the given (dtype, shape) entries."""
    itemsize = {"F32": 4, "F16": 2, "BF16": 2, "U32": 4, "I64": 8}
    header: dict[str, object] = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = itemsize[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def make_cached_repo(
    cache: Path, repo_id: str, files: Mapping[str, bytes], *, commit: str = COMMIT
) -> Path:
    """Lay out ``repo_id`` in ``cache`` the way huggingface_hub does; returns the snapshot."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (storage / "blobs" / digest).write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        depth = len(Path(name).parts) + 1
        link.symlink_to(Path(*[".."] * depth, "blobs", digest))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


def model_files() -> dict[str, bytes]:
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    return {
        "config.json": json.dumps(config).encode(),
        "model.safetensors": b"\0" * 1000,
        "tokenizer.json": b"{}",
    }


# ------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "repo_id", ["mlx-community/Qwen2.5-0.5B-Instruct-4bit", "a/b", "Org_1/x.y-z", "_a/b_"]
)
def test_valid_repo_ids(repo_id: str) -> None:
    assert validate_repo_id(repo_id) == repo_id


@pytest.mark.parametrize("repo_id", BAD_IDS)
def test_invalid_repo_ids(repo_id: str) -> None:
    with pytest.raises(InvalidRepoId, match="repo id"):
        validate_repo_id(repo_id)


def test_repo_id_must_be_a_string() -> None:
    with pytest.raises(InvalidRepoId):
        validate_repo_id(Path("a/b"))


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", COMMIT, "feature/x_y-1"])
def test_valid_revisions(revision: str) -> None:
    assert validate_revision(revision) == revision


@pytest.mark.parametrize(
    "revision",
    ["", "../x", "a/../b", "/main", "main/", "a//b", "a b", "x..y", "a:b", "a~1", "x.lock",
     "a\\b", "a\nb", "ré", "a@{1}", "x" * 256],
)  # fmt: skip
def test_invalid_revisions(revision: str) -> None:
    with pytest.raises(InvalidRevision):
        validate_revision(revision)


@pytest.mark.parametrize("repo_id", ["../x", "/etc", "a/../../b", "gpt2"])
async def test_pull_rejects_bad_ids_before_starting_anything(repo_id: str) -> None:
    with pytest.raises(InvalidRepoId):
        await anext(pull(repo_id))


async def test_pull_rejects_bad_revision() -> None:
    with pytest.raises(InvalidRevision):
        await anext(pull("org/name", "../../etc"))


async def test_pull_refuses_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOffline, match="HF_HUB_OFFLINE"):
        await anext(pull("org/name"))


def test_errors_carry_code_and_status() -> None:
    err = NotCached("x")
    assert isinstance(err, HubError)
    assert (err.code, err.http_status, err.message) == ("not_cached", 404, "x")
    assert InvalidRepoId("x").http_status == 400


def test_child_error_classification() -> None:
    assert classify(ChecksumError("f: bad"), "a/b", None)[0] == "checksum_mismatch"
    assert classify(OSError(errno.ENOSPC, "full"), "a/b", None)[0] == "disk_full"
    assert classify(InvalidRepoId("bad"), "a/b", None) == ("invalid_repo_id", "bad")
    code, message = classify(RuntimeError("boom\nmore"), "a/b", None)
    assert (code, message) == ("download_failed", "RuntimeError: boom")


def test_free_space_is_checked_before_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlx_serve.hub import download

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=10))
    cache = tmp_path / "not" / "created" / "yet"
    download._check_free_space(cache, 10)
    with pytest.raises(DiskFull, match="not enough disk space"):
        download._check_free_space(cache, 11)


# ------------------------------------------------------------------------ cache dir


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert hub_cache_dir() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", "~/explicit")
    assert hub_cache_dir() == tmp_path / "home" / "explicit"
    assert hub_cache_dir(tmp_path / "given") == tmp_path / "given"


# ------------------------------------------------------------------------ show


def test_show_local_model(tiny_model: Path) -> None:
    from safetensors.numpy import load_file

    info = show(str(tiny_model))
    tensors = load_file(tiny_model / "model.safetensors")
    assert info["source"] == "local"
    assert info["path"] == str(tiny_model)
    assert info["cached"] is True
    assert "repo_id" not in info
    names = {f["name"] for f in info["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert info["size_bytes"] == sum(f["size"] for f in info["files"])
    assert info["architecture"] == "llama"
    assert info["quantization"] is None
    assert info["parameters"] == sum(t.size for t in tensors.values())
    assert info["dtype"] in {"F32", "F16", "BF16"}
    assert info["has_tokenizer"] is True
    assert info["has_chat_template"] is True
    assert (
        estimated_size_bytes(str(tiny_model)) == (tiny_model / "model.safetensors").stat().st_size
    )


def test_show_counts_unpacked_parameters_of_a_quantized_model(tmp_path: Path) -> None:
    config = {
        "model_type": "qwen2",
        "quantization": {"group_size": 32, "bits": 4, "lm_head": {"group_size": 64, "bits": 8}},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    write_safetensors(
        tmp_path / "model.safetensors",
        {
            # 4-bit, 16 x 64 weight: packed 8 uint32 per row, 2 groups of 32 per row.
            "layers.0.weight": ("U32", [16, 8]),
            "layers.0.scales": ("BF16", [16, 2]),
            "layers.0.biases": ("BF16", [16, 2]),
            # 8-bit override, 4 x 128 weight: packed 32 uint32 per row, 2 groups of 64.
            "lm_head.weight": ("U32", [4, 32]),
            "lm_head.scales": ("BF16", [4, 2]),
            "lm_head.biases": ("BF16", [4, 2]),
            "norm.weight": ("BF16", [64]),
        },
    )
    (tmp_path / "chat_template.jinja").write_text("{{ messages }}")
    info = show(str(tmp_path))
    assert info["quantization"] == {"bits": 4, "group_size": 32}
    assert info["parameters"] == 16 * 64 + 4 * 128 + 64
    assert info["dtype"] == "BF16"
    assert info["has_chat_template"] is True
    assert info["has_tokenizer"] is False


def test_show_reads_transformers_quantization_config(tmp_path: Path) -> None:
    config = {"model_type": "llama", "quantization_config": {"quant_method": "awq", "bits": 4}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert show(str(tmp_path))["quantization"] == {
        "bits": 4,
        "group_size": None,
        "quant_method": "awq",
    }


def test_show_survives_a_corrupt_safetensors_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"garbage")
    info = show(str(tmp_path))
    assert info["parameters"] is None
    assert info["dtype"] is None
    with pytest.raises(ValueError, match="header length"):
        safetensors_header(tmp_path / "model.safetensors")


def test_show_cached_repo(cache: Path) -> None:
    snapshot = make_cached_repo(cache, "org/model", {**model_files(), "sub/extra.txt": b"hi"})
    info = show("org/model")
    assert info["source"] == "hub"
    assert info["repo_id"] == "org/model"
    assert info["revision"] == COMMIT
    assert info["path"] == str(snapshot)
    assert info["cached"] is True
    assert info["complete"] is None  # no cached tree listing to compare with
    assert {f["name"]: f["size"] for f in info["files"]} == {
        "config.json": len(model_files()["config.json"]),
        "model.safetensors": 1000,
        "tokenizer.json": 2,
        "sub/extra.txt": 2,
    }
    assert info["architecture"] == "llama"
    assert info["architectures"] == ["LlamaForCausalLM"]
    assert info["has_chat_template"] is False
    assert estimated_size_bytes("org/model") == 1000


def test_show_uncached_repo_and_missing_path(cache: Path) -> None:
    info = show("org/absent")
    assert info["cached"] is False
    assert info["source"] == "hub"
    assert info["path"] is None
    assert info["files"] == []
    assert estimated_size_bytes("org/absent") is None
    with pytest.raises(PathNotFound):
        show("/no/such/model/dir")
    assert estimated_size_bytes("/no/such/model/dir") is None


def test_estimated_size_prefers_safetensors_and_knows_unknown(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert estimated_size_bytes(str(tmp_path)) is None  # no weights: unknown, not 0
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 300)
    assert estimated_size_bytes(str(tmp_path)) == 300
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 100)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 50)
    assert estimated_size_bytes(str(tmp_path)) == 150


# ------------------------------------------------------------------------ delete_cached


@pytest.mark.parametrize("repo_id", TRAVERSAL_IDS)
def test_delete_cached_refuses_traversal(cache: Path, repo_id: str) -> None:
    victim = cache.parent / "x"
    victim.mkdir(exist_ok=True)
    with pytest.raises(InvalidRepoId):
        delete_cached(repo_id)
    assert victim.exists()


def test_delete_cached_removes_the_repo(cache: Path) -> None:
    make_cached_repo(cache, "org/model", model_files())
    make_cached_repo(cache, "org/other", model_files())
    blobs = cache / "models--org--model" / "blobs"
    (blobs / "abc.incomplete").write_bytes(b"\0" * 77)  # a partial download goes too
    (cache / ".locks" / "models--org--model").mkdir(parents=True)
    expected = sum(len(d) for d in model_files().values()) + 77 + len(COMMIT)

    assert delete_cached("org/model") == expected
    assert not (cache / "models--org--model").exists()
    assert not (cache / ".locks" / "models--org--model").exists()
    assert show("org/other")["cached"] is True  # neighbours untouched
    with pytest.raises(NotCached):
        delete_cached("org/model")


def test_delete_cached_never_touches_repos_sharing_a_commit(cache: Path) -> None:
    # huggingface_hub's delete_revisions() resolves a commit hash in whichever repo it finds
    # first; mirrors of one repo share their commits.
    names = [f"org/mirror{i}" for i in range(4)]
    for name in names:
        make_cached_repo(cache, name, model_files())
    delete_cached(names[2])
    assert [show(name)["cached"] for name in names] == [True, True, False, True]


def test_delete_cached_removes_a_partial_only_repo(cache: Path) -> None:
    blobs = cache / "models--org--partial" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "abc.incomplete").write_bytes(b"\0" * 10)
    assert delete_cached("org/partial") == 10
    assert not (cache / "models--org--partial").exists()


def test_delete_cached_refuses_a_symlinked_repo_folder(cache: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_cached_repo(outside, "org/model", model_files())
    (cache / "models--org--model").symlink_to(outside / "models--org--model")
    with pytest.raises(HubError, match="refusing"):
        delete_cached("org/model")
    assert (outside / "models--org--model" / "refs" / "main").exists()


def test_delete_cached_does_not_follow_links_out_of_the_cache(cache: Path, tmp_path: Path) -> None:
    snapshot = make_cached_repo(cache, "org/model", model_files())
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"keep me")
    (snapshot / "evil.bin").symlink_to(precious)
    delete_cached("org/model")
    assert precious.read_bytes() == b"keep me"


def test_delete_cached_not_cached(cache: Path) -> None:
    with pytest.raises(NotCached, match="org/absent"):
        delete_cached("org/absent")


# ------------------------------------------------------------------------ delete_local


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_model, dest)
    return dest


def test_delete_local_deletes_a_model_dir(model_copy: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (model_copy / "link.txt").symlink_to(outside)
    size = sum(p.stat().st_size for p in model_copy.iterdir() if not p.is_symlink())
    assert delete_local(model_copy) == size
    assert not model_copy.exists()
    assert outside.read_text() == "keep"


def test_delete_local_refuses_a_dir_that_is_not_a_model(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("important")
    with pytest.raises(NotAModelDir, match=r"config\.json"):
        delete_local(project)
    (project / "config.json").write_text("{}")
    with pytest.raises(NotAModelDir, match="weight files"):
        delete_local(project)
    assert (project / "notes.txt").read_text() == "important"


def test_delete_local_refuses_a_symlink(model_copy: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(model_copy)
    with pytest.raises(NotAModelDir, match="symlink"):
        delete_local(link)
    assert (model_copy / "config.json").exists()


def test_delete_local_refuses_the_hf_cache(cache: Path) -> None:
    snapshot = make_cached_repo(cache, "org/model", model_files())
    with pytest.raises(NotAModelDir, match="cache"):
        delete_local(snapshot)
    assert snapshot.exists()


def test_delete_local_missing_and_file(tmp_path: Path) -> None:
    with pytest.raises(PathNotFound):
        delete_local(tmp_path / "absent")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotAModelDir, match="not a directory"):
        delete_local(tmp_path / "f")


# ------------------------------------------------------------------------ fake hub


async def test_fake_hub_speaks_the_hub_protocol(tiny_model: Path) -> None:
    async with FakeHub({"org/tiny": tiny_model}, gated={"org/tiny"}) as hub:
        commit = hub.commit("org/tiny")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{hub.url}/api/models/org/tiny/revision/main") as resp:
                info = await resp.json()
            assert info["sha"] == commit
            assert {"rfilename": "config.json"} in info["siblings"]

            async with http.get(f"{hub.url}/api/models/org/tiny/tree/{commit}") as resp:
                tree = {e["path"]: e for e in await resp.json()}
            assert "lfs" in tree["model.safetensors"]
            assert "lfs" not in tree["config.json"]

            async with http.get(f"{hub.url}/api/models/org/nope") as resp:
                assert (resp.status, resp.headers["X-Error-Code"]) == (401, "RepoNotFound")
            async with http.get(f"{hub.url}/api/models/org/tiny/revision/dev") as resp:
                assert (resp.status, resp.headers["X-Error-Code"]) == (404, "RevisionNotFound")

            url = f"{hub.url}/org/tiny/resolve/main/config.json"
            async with http.head(url) as resp:
                assert resp.status == 403  # gated: files need a token
            hub.gated.clear()
            async with http.head(url) as resp:
                assert resp.status == 200
                assert resp.headers["X-Repo-Commit"] == commit
                assert resp.headers["ETag"] == f'"{tree["config.json"]["oid"]}"'
            async with http.get(url, headers={"Range": "bytes=2-5"}) as resp:
                assert resp.status == 206
                assert await resp.read() == (tiny_model / "config.json").read_bytes()[2:6]
            async with http.get(url, headers={"Range": "bytes=999999-"}) as resp:
                assert resp.status == 416

            weights = f"{hub.url}/org/tiny/resolve/main/model.safetensors"
            async with http.head(weights, allow_redirects=False) as resp:
                assert resp.status == 302
                assert resp.headers["Location"].startswith(hub.cdn_url)
                assert resp.headers["X-Linked-Size"] == str(tree["model.safetensors"]["size"])
            async with http.get(weights) as resp:  # follows the redirect to the CDN
                data = await resp.read()
            assert data == (tiny_model / "model.safetensors").read_bytes()
            assert len(hub.file_gets("model.safetensors")) == 1
            assert hub.bytes_sent("model.safetensors") == len(data)
