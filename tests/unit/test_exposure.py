"""Listening beyond this machine without an API key is allowed, but never silently."""

from __future__ import annotations

import pytest

from mlx_serve.server import exposure_warning


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_key(host: str) -> None:
    assert exposure_warning(host, None) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "my-laptop.local"])
def test_any_other_interface_without_a_key_is_warned_about(host: str) -> None:
    warning = exposure_warning(host, None)
    assert warning is not None
    assert host in warning and "api_key" in warning


def test_a_key_silences_the_warning() -> None:
    assert exposure_warning("0.0.0.0", "s3cret") is None
