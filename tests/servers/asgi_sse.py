"""A minimal ASGI app (no framework) that streams OpenAI-style SSE, for running under a real
pre-fork server: `python -m uvicorn asgi_sse:app --workers 2 --app-dir tests/servers`. The master
holds the listening socket, its spawned workers accept and answer.

Each response: a role chunk, TOKENS content chunks 3 ms apart, a finish chunk, `[DONE]`.
"""
import asyncio
import json

TOKENS = 4


def frame(obj):
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while True:  # the request body, ignored
        msg = await receive()
        if not msg.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
    await send({"type": "http.response.body", "body": frame({"choices": [{"delta": {"role": "assistant"}}]}),
                "more_body": True})
    for i in range(TOKENS):
        await asyncio.sleep(0.003)
        await send({"type": "http.response.body", "body": frame({"choices": [{"delta": {"content": f"t{i}"}}]}),
                    "more_body": True})
    await send({"type": "http.response.body",
                "body": frame({"choices": [{"delta": {}, "finish_reason": "stop"}]}) + frame("[DONE]"),
                "more_body": False})
