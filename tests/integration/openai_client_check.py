"""Drives a running Kvasir coordinator with the official `openai` Python client.

Usage: openai_client_check.py BASE_URL MODEL
Checks a completion, a chat completion, a streamed chat completion (with usage) and a
model_not_found error; prints one JSON line with what it saw and exits 0 when all hold.
"""
import json
import sys

import openai


def main() -> int:
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    seen = {"openai_version": openai.__version__}

    completion = client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=16, temperature=0)
    assert completion.object == "text_completion", completion
    assert completion.choices[0].text, completion
    assert completion.usage.completion_tokens > 0, completion
    seen["completion"] = completion.choices[0].text

    messages = [{"role": "user", "content": "Tell me a story."}]
    chat = client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0)
    assert chat.object == "chat.completion", chat
    assert chat.choices[0].message.role == "assistant", chat
    assert chat.choices[0].finish_reason in ("stop", "length"), chat
    seen["chat"] = chat.choices[0].message.content

    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            pieces.append(delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    streamed = "".join(pieces)
    assert streamed == chat.choices[0].message.content, (streamed, chat)
    assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage
    assert finish == chat.choices[0].finish_reason, finish
    seen["streamed"] = streamed

    try:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404
        assert e.code == "model_not_found", e.body
    try:
        client.completions.create(model=model, prompt="x", max_tokens=5000)
        raise AssertionError("a request over the context was accepted")
    except openai.BadRequestError as e:
        assert e.code == "context_length_exceeded", e.body

    models = client.models.list()
    assert [m.id for m in models.data] == [model], models
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
