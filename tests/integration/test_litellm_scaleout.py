"""Scale-out with LiteLLM: the two example configs in examples/, run as they are written.

- ``examples/litellm-router.yaml`` in a ``litellm.Router``, in front of two real mlx-serve
  servers (the "hosts"): requests for its one name land on both (each server's own
  ``/api/stats`` counts them), and with one server stopped every request still succeeds.
- ``examples/litellm-proxy.yaml`` in the LiteLLM proxy, run as users run it (``litellm
  --config ...``, a real process in its own process group), in front of a real mlx-serve:
  the openai SDK through it for chat, a streamed chat and embeddings.

Only the addresses, ports and keys are filled in, through the environment variables the files
name (``os.environ/NAME``, which both ``litellm.Router`` and the proxy's config loader read).
The servers are configured as the files' comments tell users: an API key, and
``host.docker.internal`` among the allowed hosts. Nothing reaches the network: LiteLLM's
offline settings are on, and every address is on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import shutil
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import psutil
import pytest
import pytest_asyncio
import yaml

from mlx_serve.tiny_models.embedding import embedding_model_dir
from mlx_serve.workers.process import end_group, free_port
from tests.conftest import eventually
from tests.integration.conftest import Running, server_factory

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    # litellm's Router runs blocking work on the loop it is called from (it builds pydantic
    # schemas on first use, ~0.2-2 s): the client's stalls, not the server's.
    pytest.mark.loop_block_ok("litellm's Router builds pydantic schemas on the caller's loop"),
]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ROUTER_CONFIG = EXAMPLES / "litellm-router.yaml"
PROXY_CONFIG = EXAMPLES / "litellm-proxy.yaml"

#: What keeps LiteLLM off the network (the example files' comments name the same): set here
#: for the ``litellm`` imported by this process, and passed to the proxy process.
LITELLM_OFFLINE = {
    "LITELLM_OFFLINE_MODE": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY_DISABLED": "true",
}
for _name, _value in LITELLM_OFFLINE.items():
    os.environ.setdefault(_name, _value)

KEYS = {"a": "key-host-a", "b": "key-host-b"}
MASTER_KEY = "sk-scaleout-master"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
#: How long the proxy may take to start: ~15 s alone on 2 cores, more while servers load.
PROXY_START_TIMEOUT = 120.0


@dataclass
class Proxy:
    """The LiteLLM proxy process (the leader of its own process group) and where it listens."""

    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    async def ready(self) -> None:
        """Wait until it listens and answers ``/health/liveliness``."""

        def listening() -> bool:
            if self.proc.returncode is not None:
                return True  # exited: the assertion below says so, with its log
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return False
            return True

        await eventually(listening, timeout=PROXY_START_TIMEOUT, what="the LiteLLM proxy")
        assert self.proc.returncode is None, f"the proxy exited:\n{self.log_tail()}"
        async with (
            aiohttp.ClientSession() as http,
            http.get(self.url + "/health/liveliness") as r,
        ):
            assert r.status == 200, await r.text()


@dataclass
class Hosts:
    """Two mlx-serve servers standing in for two hosts, and the proxy in front of ``a``."""

    a: Running
    b: Running
    proxy: Proxy


def example_env(config: Path, values: Mapping[str, str]) -> dict[str, str]:
    """``values`` for the ``os.environ/NAME`` references in ``config``, checked to be exactly
    the names the file uses (one it lacks, or one left unfilled, fails here, not in LiteLLM)."""

    def references(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            for item in node:
                yield from references(item)
        elif isinstance(node, str) and node.startswith("os.environ/"):
            yield node.removeprefix("os.environ/")

    names = set(references(yaml.safe_load(config.read_text())))
    assert names == set(values), f"{config.name} reads {sorted(names)}"
    return dict(values)


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            patch.setenv(name, value)
        yield


def router_from_example(hosts: Hosts) -> Any:
    """A ``litellm.Router`` built from ``examples/litellm-router.yaml`` as its comment tells
    users to, with the two servers' addresses and keys in the variables it names
    (``litellm.Router`` resolves ``os.environ/NAME`` itself, when it is built)."""
    from litellm.router import Router

    config = yaml.safe_load(ROUTER_CONFIG.read_text())
    values = example_env(
        ROUTER_CONFIG,
        {
            "MLX_SERVE_A_API_BASE": hosts.a.url + "/v1",
            "MLX_SERVE_A_API_KEY": KEYS["a"],
            "MLX_SERVE_B_API_BASE": hosts.b.url + "/v1",
            "MLX_SERVE_B_API_KEY": KEYS["b"],
        },
    )
    with environment(values):
        return Router(model_list=config["model_list"], **config["router_settings"])


async def answered(run: Running, key: str, model: str = "qwen") -> int:
    """How many requests for ``model`` this server answered with a 200, by its own count."""
    headers = {"Authorization": f"Bearer {key}"}
    async with run.http.get("/api/stats", headers=headers) as r:
        assert r.status == 200, await r.text()
        stats = await r.json()
    (entry,) = [m for m in stats["models"] if m["name"] == model]
    count: int = entry["metrics"]["statuses"].get("200", 0)
    return count


async def start_proxy(workdir: Path, mlx_serve_url: str, key: str) -> Proxy:
    """``litellm --config examples/litellm-proxy.yaml`` in its own process group (not waited
    for: it takes seconds to start, which the servers' start overlaps)."""
    script = shutil.which("litellm", path=str(Path(sys.executable).parent))
    assert script is not None, "the litellm command is not installed next to this Python"
    port = free_port()
    env = {
        **os.environ,
        **LITELLM_OFFLINE,
        **example_env(
            PROXY_CONFIG,
            {
                "MLX_SERVE_API_BASE": mlx_serve_url + "/v1",
                "MLX_SERVE_API_KEY": key,
                "LITELLM_MASTER_KEY": MASTER_KEY,
            },
        ),
    }
    log = workdir / "litellm-proxy.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            script,
            "--config",
            str(PROXY_CONFIG),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=workdir,  # LiteLLM reads a .env from its working directory: none here
            start_new_session=True,
        )
    return Proxy(proc, port, log)


async def stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the process group, SIGKILL it after a grace period; then nothing of it runs
    (the proxy's uvicorn workers included)."""
    await end_group(proc, 15.0)
    await eventually(
        lambda: not group_alive(proc.pid), timeout=10, what=f"process group {proc.pid} to exit"
    )


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies don't count)."""
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hosts(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
) -> AsyncIterator[Hosts]:
    """Host ``a`` serves ``qwen`` (a tiny random-weight llama) and ``minilm`` (the real
    all-MiniLM-L6-v2), configured for the Docker topology (its key, and
    ``host.docker.internal`` among its allowed hosts); host ``b`` (a LAN host) the same
    ``qwen``, with a key of its own. The proxy in front of ``a`` starts first: it takes
    seconds, and the servers start meanwhile."""
    workdir = tmp_path_factory.mktemp("scaleout")
    # Imported here, not in the tests: litellm's import takes seconds of the event loop
    # (the loop-block guard watches test bodies, not fixtures), and is too slow for collection.
    await asyncio.to_thread(importlib.import_module, "litellm.router")
    port_a = free_port()
    proxy = await start_proxy(workdir, f"http://127.0.0.1:{port_a}", KEYS["a"])
    try:
        async with server_factory(workdir) as start:
            qwen = {"path": str(tiny_models["a"])}
            a = await start(
                {"qwen": qwen, "minilm": {"type": "embedding", "path": str(embedding_model_dir())}},
                port=port_a,
                api_key=KEYS["a"],
                allowed_hosts=["host.docker.internal"],
                max_loaded_models=2,
            )
            b = await start({"qwen": qwen}, api_key=KEYS["b"])
            yield Hosts(a, b, proxy)
    finally:
        await stop_group(proxy.proc)


async def test_router_spreads_one_name_over_both_hosts(hosts: Hosts) -> None:
    router = router_from_example(hosts)
    before = [await answered(hosts.a, KEYS["a"]), await answered(hosts.b, KEYS["b"])]
    count = 16
    replies = await asyncio.gather(
        *(router.acompletion(model="qwen", messages=MESSAGES, max_tokens=4) for _ in range(count))
    )
    assert all(isinstance(r.choices[0].message.content, str) for r in replies)
    after = [await answered(hosts.a, KEYS["a"]), await answered(hosts.b, KEYS["b"])]
    served = [n - m for n, m in zip(after, before, strict=True)]
    # simple-shuffle is random: all 16 on one host has odds of 2 in 65536.
    assert all(n > 0 for n in served), f"requests per host: {served}"
    assert sum(served) == count, f"requests per host: {served}"


async def test_proxy_chat(hosts: Hosts) -> None:
    import openai

    await hosts.proxy.ready()
    client = openai.AsyncOpenAI(base_url=hosts.proxy.url + "/v1", api_key=MASTER_KEY)
    async with client:
        before = await answered(hosts.a, KEYS["a"])
        reply = await client.chat.completions.create(model="qwen", messages=MESSAGES, max_tokens=8)
        assert isinstance(reply.choices[0].message.content, str)
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        assert await answered(hosts.a, KEYS["a"]) == before + 1


async def test_proxy_stream(hosts: Hosts) -> None:
    import openai

    await hosts.proxy.ready()
    client = openai.AsyncOpenAI(base_url=hosts.proxy.url + "/v1", api_key=MASTER_KEY)
    async with client:
        before = await answered(hosts.a, KEYS["a"])
        stream = await client.chat.completions.create(
            model="qwen", messages=MESSAGES, max_tokens=8, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert await answered(hosts.a, KEYS["a"]) == before + 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and text, chunks
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length"), finishes


async def test_proxy_embeddings(hosts: Hosts) -> None:
    import openai

    await hosts.proxy.ready()
    client = openai.AsyncOpenAI(base_url=hosts.proxy.url + "/v1", api_key=MASTER_KEY)
    async with client:
        before = await answered(hosts.a, KEYS["a"], model="minilm")
        result = await client.embeddings.create(model="minilm", input=["a cat", "a kitten"])
    assert [len(d.embedding) for d in result.data] == [384, 384]
    assert await answered(hosts.a, KEYS["a"], model="minilm") == before + 1


async def test_proxy_refuses_a_client_without_its_key(hosts: Hosts) -> None:
    await hosts.proxy.ready()
    body = {"model": "qwen", "messages": MESSAGES, "max_tokens": 4}
    async with (
        aiohttp.ClientSession() as http,
        http.post(hosts.proxy.url + "/v1/chat/completions", json=body) as r,
    ):
        assert r.status == 401, await r.text()


async def test_docker_host_name_needs_allowed_hosts(hosts: Hosts) -> None:
    """What LiteLLM in a container sends (``Host: host.docker.internal:8095``) is answered by
    the server that lists the name in ``allowed_hosts`` and refused by the one that does not."""

    async def models_status(run: Running, key: str) -> tuple[int, Any]:
        port = run.url.rsplit(":", 1)[1]
        headers = {"Authorization": f"Bearer {key}", "Host": f"host.docker.internal:{port}"}
        async with run.http.get("/v1/models", headers=headers) as r:
            return r.status, await r.json()

    status, body = await models_status(hosts.a, KEYS["a"])
    assert status == 200, body
    status, body = await models_status(hosts.b, KEYS["b"])
    assert (status, body["error"]["code"]) == (403, "host_not_allowed"), body


async def test_router_fails_over_when_a_host_stops(hosts: Hosts) -> None:
    """Last in this module: it stops host ``b`` for good."""
    router = router_from_example(hosts)  # fresh: it does not know yet that b is gone
    hosts.b.handle.stop()
    await hosts.b.task
    before = await answered(hosts.a, KEYS["a"])
    # Picked at random until b cools down: that b is never tried in 16 has odds of 1 in 65536.
    count = 16
    for _ in range(count):
        reply = await router.acompletion(model="qwen", messages=MESSAGES, max_tokens=4)
        assert isinstance(reply.choices[0].message.content, str)
    assert await answered(hosts.a, KEYS["a"]) == before + count
