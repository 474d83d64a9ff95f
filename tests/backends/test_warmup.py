"""The warm-up endpoint (backends.warmup): every request refused at once, nothing else served."""

from __future__ import annotations

import httpx
import pytest

from backends.warmup import RefusingEndpoint

pytestmark = pytest.mark.anyio


async def test_every_request_is_refused_with_a_400_on_the_loopback() -> None:
    async with RefusingEndpoint() as endpoint, httpx.AsyncClient() as client:
        assert endpoint.base_url.startswith("http://127.0.0.1:")
        body = {"model": "warm-up", "messages": [{"role": "user", "content": "x" * 100_000}], "stream": True}
        response = await client.post(f"{endpoint.base_url}/chat/completions", json=body)
        assert response.status_code == 400
        assert "warm-up" in response.json()["error"]["message"]
        assert (await client.get(f"{endpoint.base_url}/models")).status_code == 400
        assert endpoint.requests == 2
