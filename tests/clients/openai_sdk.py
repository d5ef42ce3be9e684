#!/usr/bin/env python3
"""Drives a running tiergate with the official `openai` Python SDK, as an application would.

Usage: openai_sdk.py BASE_URL API_KEY SYSTEM
Prints one JSON object with what the SDK saw; `tests/api/openai_sdk.rs` checks it.
"""
import json, sys

import openai
from openai import OpenAI

base_url, api_key, system = sys.argv[1:4]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
ask = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
seen = {}

seen["models"] = [model.id for model in client.models.list()]
seen["retrieved"] = client.models.retrieve(system).id
try:
    client.models.retrieve("no-such-system")
    seen["retrieve_unknown"] = "found"
except openai.NotFoundError as error:
    seen["retrieve_unknown"] = {"status": error.status_code, "code": error.code}

answer = client.chat.completions.create(model=system, messages=ask, max_tokens=8, logprobs=True)
choice = answer.choices[0]
seen["chat"] = {
    "content": choice.message.content,
    "finish_reason": choice.finish_reason,
    "logprob_tokens": [t.token for t in choice.logprobs.content],
    "usage": answer.usage.completion_tokens,
    "tier_served": (answer.model_extra or {}).get("tiergate", {}).get("tier_served"),
}

top = client.chat.completions.create(model=system, messages=ask, max_tokens=8, logprobs=True, top_logprobs=5)
seen["top_logprobs"] = {
    "content": top.choices[0].message.content,
    "tokens": [{"token": t.token, "logprob": t.logprob,
                "top": [[alt.token, alt.logprob] for alt in t.top_logprobs]} for t in top.choices[0].logprobs.content],
}

streamed = client.chat.completions.create(model=system, messages=ask, max_tokens=8, stream=True, logprobs=True,
                                          stream_options={"include_usage": True})
text, usage, streamed_tokens = "", None, []
for chunk in streamed:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
        streamed_tokens += [t.token for t in chunk.choices[0].logprobs.content]
    if chunk.usage:
        usage = chunk.usage.completion_tokens
seen["stream"] = {"content": text, "usage": usage, "logprob_tokens": streamed_tokens}

tool = {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object", "properties": {}}}}
refusals = {
    "tools": {"tools": [tool]},
    "tool_choice": {"tool_choice": "required"},
    "response_format": {"response_format": {"type": "json_object"}},
    "logit_bias": {"logit_bias": {"42": 5}},
    "n": {"n": 2},
}
seen["refused"] = {}
for name, extra in refusals.items():
    try:
        client.chat.completions.create(model=system, messages=ask, max_tokens=4, **extra)
        seen["refused"][name] = "accepted"
    except openai.BadRequestError as error:
        seen["refused"][name] = {"status": error.status_code, "code": error.code, "param": error.param}

print(json.dumps(seen))
