"""Streams chat completions with the official `openai` SDK's synchronous client, as its users do
(it stops at `data: [DONE]` and lets the connection go), and prints one JSON line per request with
what the client itself saw, on CLOCK_MONOTONIC (the clock the agent's timestamps use):
`start_ns` just before the call, `first_token_ns` at the first chunk with content, `end_ns` after
the stream ended, `content_chunks`.

usage: openai_stream.py BASE_URL REQUESTS [EXTRA_QUERY_JSON]
"""
import json
import sys
import time

import openai

base_url, requests = sys.argv[1], int(sys.argv[2])
extra_query = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
client = openai.OpenAI(base_url=base_url, api_key="sk-inferscope-test-key", max_retries=0, timeout=120)
for i in range(requests):
    start = time.monotonic_ns()
    first, chunks = None, 0
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": f"Count from one to five, request {i}."}],
        stream=True,
        max_tokens=12,
        temperature=0,
        extra_query=extra_query,
    )
    for event in stream:
        if event.choices and event.choices[0].delta.content:
            chunks += 1
            if first is None:
                first = time.monotonic_ns()
    end = time.monotonic_ns()
    print(json.dumps({"start_ns": start, "first_token_ns": first, "end_ns": end, "content_chunks": chunks}), flush=True)
