#!/usr/bin/env python3
"""Drives kobo's OpenAI- and Ollama-compatible gateway with the official
Python clients (openai.OpenAI and ollama.Client, pinned in requirements.txt),
one scenario per run:

    python gateway_client.py --url https://127.0.0.1:PORT --key KEY \
        --ca /path/ca.pem --model MODEL --scenario NAME

It prints exactly one JSON object on stdout and exits 0 when the scenario ran,
even when it observed the error the scenario provokes (that error is recorded
in the JSON). Any other exception exits 1 with its traceback on stderr.
`--list` prints the scenario names instead.

The scenarios *_stream_slow print a line FIRST_CHUNK on stderr as soon as the
first text of the stream has arrived, *_stream_abandon as soon as its first
chunk has.
"""

import argparse
import json
import ssl
import sys
import traceback

import ollama
import openai

PROMPT = "Write fizzbuzz in Rust"
BAD_KEY = "kobo_bad"
UNKNOWN_MODEL = "no-such-model"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
        },
    },
}
TOOL_PROMPT = "What is the weather in Paris?"
JSON_PROMPT = "Reply with a JSON object describing fizzbuzz"


class Gateway:
    """The command line's settings, and clients made from them."""

    def __init__(self, args):
        self.url = args.url.rstrip("/")
        self.key = args.key
        self.model = args.model
        self.timeout = args.timeout
        # The gateway's certificate is signed by kobo's own CA: trust only it.
        self.tls = ssl.create_default_context(cafile=args.ca)

    def openai(self, key=None):
        # openai 3.x runs on httpx2 (not httpx): DefaultHttpx2Client is
        # httpx2.Client with the SDK's defaults. trust_env=False keeps proxy
        # and CA variables of the environment out of it.
        http = openai.DefaultHttpx2Client(verify=self.tls, trust_env=False)
        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=key or self.key,
            http_client=http,
            max_retries=0,
            timeout=self.timeout,
        )

    def ollama(self, key=None):
        # ollama.Client passes its extra keyword arguments to httpx.Client.
        return ollama.Client(
            host=self.url,
            headers={"Authorization": f"Bearer {key or self.key}"},
            verify=self.tls,
            trust_env=False,
            timeout=self.timeout,
        )


def first_chunk_seen():
    print("FIRST_CHUNK", file=sys.stderr, flush=True)


def error_fields(exc):
    """What a stream that raised is recorded with."""
    cause = exc.__cause__ or exc.__context__
    return {
        "error": str(exc) or type(exc).__name__,
        "error_type": type(exc).__name__,
        "error_cause": None if cause is None else f"{type(cause).__name__}: {cause}",
    }


NO_ERROR = {"error": None, "error_type": None, "error_cause": None}


def kobo_headers(headers):
    return {"job_id": headers.get("x-kobo-job-id"), "node": headers.get("x-kobo-node")}


def usage_dict(usage):
    return None if usage is None else usage.model_dump(exclude_none=True)


def openai_status_error(exc):
    """An openai.APIStatusError as recorded: the server's own message."""
    body = exc.body if isinstance(exc.body, dict) else {}
    return {
        "status": exc.status_code,
        "exception": type(exc).__name__,
        "message": body.get("message", exc.message),
        "type": exc.type,
        "code": exc.code,
        "param": exc.param,
    }


def openai_expect_error(call):
    """Runs `call`, which should fail with an HTTP error status."""
    try:
        call()
    except openai.APIStatusError as exc:
        return openai_status_error(exc)
    return {"status": None, "exception": None, "message": None,
            "type": None, "code": None, "param": None}


def chat_messages(prompt=PROMPT):
    return [{"role": "user", "content": prompt}]


# --- OpenAI: /v1/chat/completions ------------------------------------------


def openai_chat(gw):
    raw = gw.openai().chat.completions.with_raw_response.create(
        model=gw.model, messages=chat_messages())
    resp = raw.parse()
    choice = resp.choices[0]
    return {
        "text": choice.message.content,
        "finish_reason": choice.finish_reason,
        "prompt_tokens": resp.usage.prompt_tokens if resp.usage else None,
        "completion_tokens": resp.usage.completion_tokens if resp.usage else None,
        "model": resp.model,
        **kobo_headers(raw.headers),
    }


def open_chat_stream(gw, **extra):
    raw = gw.openai().chat.completions.with_raw_response.create(
        model=gw.model, messages=chat_messages(), stream=True,
        stream_options={"include_usage": True}, **extra)
    return raw.parse(), kobo_headers(raw.headers)


def read_chat_stream(stream, on_first=None):
    """Reads a chat completion stream to its end (or its error)."""
    out = {"text": "", "chunks": 0, "finish_reason": None, "usage": None,
           "tool_calls": [], **NO_ERROR}
    calls = {}  # index -> {"name", "arguments"} assembled from deltas
    try:
        for chunk in stream:
            out["chunks"] += 1
            if chunk.usage is not None:
                out["usage"] = usage_dict(chunk.usage)
            for choice in chunk.choices:
                delta = choice.delta
                if delta is not None:
                    out["text"] += delta.content or ""
                    if on_first and out["text"]:
                        on_first()
                        on_first = None
                    for tc in delta.tool_calls or []:
                        call = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                        if tc.function is not None:
                            call["name"] += tc.function.name or ""
                            call["arguments"] += tc.function.arguments or ""
                if choice.finish_reason is not None:
                    out["finish_reason"] = choice.finish_reason
    except Exception as exc:  # recorded: a stream cut short is what some tests provoke
        out.update(error_fields(exc))
    out["tool_calls"] = [calls[i] for i in sorted(calls)]
    return out


def openai_chat_stream(gw):
    stream, headers = open_chat_stream(gw)
    out = read_chat_stream(stream)
    del out["tool_calls"]
    return {**out, **headers}


def openai_chat_stream_slow(gw):
    stream, headers = open_chat_stream(gw)
    out = read_chat_stream(stream, on_first=first_chunk_seen)
    del out["tool_calls"]
    return {**out, **headers}


def openai_chat_stream_abandon(gw):
    stream, headers = open_chat_stream(gw)
    chunk = next(iter(stream))
    first_chunk_seen()
    stream.close()
    text = "".join((c.delta.content or "") for c in chunk.choices if c.delta)
    return {"closed": True, "first_text": text, **headers}


def tool_calls_of(message):
    return [{"name": tc.function.name, "arguments": tc.function.arguments}
            for tc in message.tool_calls or []]


def openai_tools(gw):
    resp = gw.openai().chat.completions.create(
        model=gw.model, messages=chat_messages(TOOL_PROMPT), tools=[WEATHER_TOOL])
    choice = resp.choices[0]
    return {
        "tool_calls": tool_calls_of(choice.message),
        "finish_reason": choice.finish_reason,
        "text": choice.message.content,
    }


def openai_tools_stream(gw):
    stream = gw.openai().chat.completions.create(
        model=gw.model, messages=chat_messages(TOOL_PROMPT), tools=[WEATHER_TOOL],
        stream=True)
    out = read_chat_stream(stream)
    return {k: out[k] for k in ("tool_calls", "finish_reason", "text", "chunks", "error")}


def openai_json(gw):
    resp = gw.openai().chat.completions.create(
        model=gw.model, messages=chat_messages(JSON_PROMPT),
        response_format={"type": "json_object"})
    text = resp.choices[0].message.content or ""
    return {"text": text, "parsed_ok": parses_as_object(text),
            "finish_reason": resp.choices[0].finish_reason}


def parses_as_object(text):
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def openai_bad_key(gw):
    client = gw.openai(key=BAD_KEY)
    return openai_expect_error(lambda: client.chat.completions.create(
        model=gw.model, messages=chat_messages()))


def openai_unknown_model(gw):
    client = gw.openai()
    return openai_expect_error(lambda: client.chat.completions.create(
        model=UNKNOWN_MODEL, messages=chat_messages()))


def openai_bad_field(gw):
    client = gw.openai()
    return openai_expect_error(lambda: client.chat.completions.create(
        model=gw.model, messages=chat_messages(), extra_body={"functions": []}))


# --- OpenAI: /v1/completions, /v1/embeddings, /v1/models ---------------------


def openai_completions(gw):
    raw = gw.openai().completions.with_raw_response.create(model=gw.model, prompt=PROMPT)
    resp = raw.parse()
    choice = resp.choices[0]
    return {
        "text": choice.text,
        "finish_reason": choice.finish_reason,
        "prompt_tokens": resp.usage.prompt_tokens if resp.usage else None,
        "completion_tokens": resp.usage.completion_tokens if resp.usage else None,
        "model": resp.model,
        **kobo_headers(raw.headers),
    }


def openai_completions_stream(gw):
    raw = gw.openai().completions.with_raw_response.create(
        model=gw.model, prompt=PROMPT, stream=True,
        stream_options={"include_usage": True})
    stream = raw.parse()
    out = {"text": "", "chunks": 0, "finish_reason": None, "usage": None, **NO_ERROR}
    try:
        for chunk in stream:
            out["chunks"] += 1
            if chunk.usage is not None:
                out["usage"] = usage_dict(chunk.usage)
            for choice in chunk.choices:
                out["text"] += choice.text or ""
                if choice.finish_reason is not None:
                    out["finish_reason"] = choice.finish_reason
    except Exception as exc:  # recorded, as for chat streams
        out.update(error_fields(exc))
    return {**out, **kobo_headers(raw.headers)}


def openai_embeddings(gw):
    # The client asks for encoding_format=base64 and decodes it, as it does
    # for everyone who does not name a format.
    resp = gw.openai().embeddings.create(model=gw.model, input=[PROMPT, "hello"])
    return {"n": len(resp.data), "dims": len(resp.data[0].embedding) if resp.data else 0}


def openai_models(gw):
    return {"ids": [m.id for m in gw.openai().models.list()]}


def openai_model_get(gw):
    return {"id": gw.openai().models.retrieve(gw.model).id}


# --- Ollama ----------------------------------------------------------------


def ollama_expect_error(call):
    try:
        call()
    except ollama.ResponseError as exc:
        return {"status": exc.status_code, "message": exc.error}
    return {"status": None, "message": None}


def ollama_stream(parts, text_of, on_first=None):
    """Reads an Ollama NDJSON stream; the last chunk tells done and counts."""
    out = {"text": "", "chunks": 0, "done": None, "done_reason": None,
           "eval_count": None, "prompt_eval_count": None, **NO_ERROR}
    try:
        for part in parts:
            out["chunks"] += 1
            out["text"] += text_of(part) or ""
            if on_first and out["text"]:
                on_first()
                on_first = None
            out["done"] = part.done
            out["done_reason"] = part.done_reason
            out["eval_count"] = part.eval_count
            out["prompt_eval_count"] = part.prompt_eval_count
    except Exception as exc:  # recorded, as for OpenAI streams
        out.update(error_fields(exc))
    return out


def ollama_final(resp, text):
    return {
        "text": text,
        "done": resp.done,
        "done_reason": resp.done_reason,
        "eval_count": resp.eval_count,
        "prompt_eval_count": resp.prompt_eval_count,
        "model": resp.model,
    }


def ollama_chat(gw):
    resp = gw.ollama().chat(model=gw.model, messages=chat_messages())
    return ollama_final(resp, resp.message.content)


def ollama_chat_stream(gw):
    parts = gw.ollama().chat(model=gw.model, messages=chat_messages(), stream=True)
    return ollama_stream(parts, lambda p: p.message.content)


def ollama_chat_stream_slow(gw):
    parts = gw.ollama().chat(model=gw.model, messages=chat_messages(), stream=True)
    return ollama_stream(parts, lambda p: p.message.content, on_first=first_chunk_seen)


def ollama_generate(gw):
    resp = gw.ollama().generate(model=gw.model, prompt=PROMPT)
    return ollama_final(resp, resp.response)


def ollama_generate_stream(gw):
    parts = gw.ollama().generate(model=gw.model, prompt=PROMPT, stream=True)
    return ollama_stream(parts, lambda p: p.response)


def ollama_generate_stream_slow(gw):
    parts = gw.ollama().generate(model=gw.model, prompt=PROMPT, stream=True)
    return ollama_stream(parts, lambda p: p.response, on_first=first_chunk_seen)


def ollama_embed(gw):
    resp = gw.ollama().embed(model=gw.model, input=[PROMPT, "hello"])
    vectors = resp.embeddings
    return {"n": len(vectors), "dims": len(vectors[0]) if vectors else 0}


def ollama_embeddings(gw):
    resp = gw.ollama().embeddings(model=gw.model, prompt=PROMPT)
    return {"n": 1, "dims": len(resp.embedding)}


def ollama_tags(gw):
    return {"names": [m.model for m in gw.ollama().list().models]}


def ollama_ps(gw):
    return {"names": [m.model or m.name for m in gw.ollama().ps().models]}


def ollama_show(gw):
    resp = gw.ollama().show(gw.model)
    return {
        "ok": True,
        "family": resp.details.family if resp.details else None,
        "capabilities": resp.capabilities,
    }


def ollama_version(gw):
    # ollama.Client has no method for /api/version: ask it through the
    # client's own httpx client (same TLS and headers).
    resp = gw.ollama()._client.get("/api/version")
    resp.raise_for_status()
    return {"version": resp.json().get("version")}


def ollama_bad_key(gw):
    client = gw.ollama(key=BAD_KEY)
    return ollama_expect_error(lambda: client.chat(model=gw.model, messages=chat_messages()))


def ollama_unknown_model(gw):
    client = gw.ollama()
    return ollama_expect_error(lambda: client.chat(model=UNKNOWN_MODEL, messages=chat_messages()))


def ollama_tools(gw):
    resp = gw.ollama().chat(model=gw.model, messages=chat_messages(TOOL_PROMPT),
                            tools=[WEATHER_TOOL])
    calls = [{"name": tc.function.name, "arguments": dict(tc.function.arguments)}
             for tc in resp.message.tool_calls or []]
    return {"tool_calls": calls, "done_reason": resp.done_reason,
            "text": resp.message.content}


def ollama_json(gw):
    resp = gw.ollama().chat(model=gw.model, messages=chat_messages(JSON_PROMPT), format="json")
    text = resp.message.content or ""
    return {"text": text, "parsed_ok": parses_as_object(text)}


def openai_chat_limited(gw):
    """Two chats on a key limited to one request a minute: the first is
    answered, the second refused with 429 (max_retries=0: the SDK would
    otherwise wait out Retry-After and try again)."""
    client = gw.openai()
    first = client.chat.completions.create(model=gw.model, messages=chat_messages())
    try:
        client.chat.completions.create(model=gw.model, messages=chat_messages())
    except openai.RateLimitError as exc:
        refused = openai_status_error(exc)
        refused["retry_after"] = exc.response.headers.get("retry-after")
        return {"first": first.choices[0].message.content is not None, "refused": refused}
    return {"first": True, "refused": None}


def ollama_chat_limited(gw):
    client = gw.ollama()
    first = client.chat(model=gw.model, messages=chat_messages())
    refused = ollama_expect_error(
        lambda: client.chat(model=gw.model, messages=chat_messages()))
    return {"first": bool(first.message.content), "refused": refused}


SCENARIOS = {f.__name__: f for f in (
    openai_chat_limited,
    ollama_chat_limited,
    openai_chat,
    openai_chat_stream,
    openai_chat_stream_slow,
    openai_chat_stream_abandon,
    openai_completions,
    openai_completions_stream,
    openai_embeddings,
    openai_models,
    openai_model_get,
    openai_tools,
    openai_tools_stream,
    openai_json,
    openai_bad_key,
    openai_unknown_model,
    openai_bad_field,
    ollama_chat,
    ollama_chat_stream,
    ollama_chat_stream_slow,
    ollama_generate,
    ollama_generate_stream,
    ollama_generate_stream_slow,
    ollama_embed,
    ollama_embeddings,
    ollama_tags,
    ollama_ps,
    ollama_show,
    ollama_version,
    ollama_bad_key,
    ollama_unknown_model,
    ollama_tools,
    ollama_json,
)}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="print the scenario names and exit")
    p.add_argument("--url", help="gateway base URL, e.g. https://127.0.0.1:8443")
    p.add_argument("--key", help="kobo API key")
    p.add_argument("--ca", help="PEM file of the CA that signed the gateway's certificate")
    p.add_argument("--model", help="model name the gateway serves")
    p.add_argument("--scenario", choices=sorted(SCENARIOS))
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    args = p.parse_args(argv)
    if not args.list:
        missing = [f"--{n}" for n in ("url", "key", "ca", "model", "scenario")
                   if getattr(args, n) is None]
        if missing:
            p.error("missing " + " ".join(missing))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    try:
        result = SCENARIOS[args.scenario](Gateway(args))
    except Exception:
        traceback.print_exc(file=sys.stderr)
        return 1
    print(json.dumps({"scenario": args.scenario, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
