"""A scripted Anthropic Messages API on 127.0.0.1: the test double behind the model seam.

It owns what a test needs to drive the real `anthropic` SDK without the internet: an HTTP
server in a background thread that answers POST /v1/messages from a script (one step per
request that passes validation), plain or streamed (SSE), with the errors, dropped
connections and delays a real deployment produces, the validation errors the real API
returns for malformed conversations, and usage numbers that model prompt caching.

    with ScriptedModel([reply(text("I'll look"), tool_use("bash", {"command": "ls"})),
                        lambda body: text("saw " + body["messages"][-1]["content"][0]["content"]),
                        error(529), text("done")]) as api:
        ...  # point the SDK at api.base_url; inspect api.requests afterwards

Steps: a block from `text()`/`tool_use()` (a one-block reply), a plain str (a text
reply), `reply(*blocks)`, `error(status)`, `drop()`, `delay(seconds, step)`, or a
callable `fn(request_body) -> step`. When the script runs out the server answers 500
"script exhausted" with `x-should-retry: false`, so a test fails loudly instead of hanging.

Deliberate differences from the real API, so tests catch more:
- roles must strictly alternate, starting with "user" (the real API now merges
  consecutive same-role turns; an agent loop that relies on that is probably wrong);
- the key may come as `x-api-key` or as `Authorization: Bearer` (the installed SDK 2.x
  sends an API key as a Bearer token); either is recorded, absence is a 401;
- token counts are ceil(characters of canonical JSON / 4), not a tokenizer.

Caching: the cacheable prefix runs, in the API's order tools → system → messages, up to
each block that carries `cache_control` (or, with a top-level `cache_control`, the last
block). A breakpoint's prefix is hashed (per model, `cache_control` markers stripped, so
moving a breakpoint does not change the content hash); from each breakpoint the server
looks back up to 20 blocks for the longest prefix an earlier request wrote, which is
reported as `cache_read_input_tokens`; the rest up to the last breakpoint is
`cache_creation_input_tokens` and every breakpoint's prefix is remembered; what follows
the last breakpoint is `input_tokens`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import secrets
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

LOOKBACK_BLOCKS = 20  # how far the real API looks back from a breakpoint for a cache hit
MAX_BREAKPOINTS = 4

# Anthropic-defined tool types and the name each one must carry.
SERVER_TOOLS = {
    "bash_20241022": "bash",
    "bash_20250124": "bash",
    "text_editor_20241022": "str_replace_editor",
    "text_editor_20250124": "str_replace_editor",
    "text_editor_20250429": "str_replace_based_edit_tool",
    "text_editor_20250728": "str_replace_based_edit_tool",
}
VERSIONED_TYPE = re.compile(r"^[a-z_]+_\d{8}$")  # other server tools (web_search_20250305, ...)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}

# -- script steps -------------------------------------------------------------------------


def text(s: str) -> dict:
    """A text content block; as a step, a one-block reply."""
    return {"type": "text", "text": s}


def tool_use(name: str, input: dict, id: str | None = None) -> dict:
    """A tool_use content block; as a step, a one-block reply (stop_reason "tool_use")."""
    return {"type": "tool_use", "id": id or "toolu_" + secrets.token_hex(12), "name": name, "input": input}


def broken_tool_use(name: str, raw_json: str) -> dict:
    """A tool_use block whose streamed input is `raw_json` verbatim (e.g. not JSON at all),
    as a model sometimes sends; the SDK cannot parse it."""
    return {"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": name, "input": raw_json}


@dataclass
class Reply:
    blocks: list[dict]
    stop_reason: str | None = None  # None: "tool_use" if any tool_use block, else "end_turn"
    usage: dict | None = None  # overrides the computed usage numbers


def reply(*blocks: dict | str, stop_reason: str | None = None, usage: dict | None = None) -> Reply:
    return Reply([text(b) if isinstance(b, str) else b for b in blocks], stop_reason, usage)


@dataclass
class Error:
    status: int
    message: str | None = None
    type: str | None = None
    retry_after: float | None = None
    should_retry: bool | None = None  # sets x-should-retry when not None
    in_stream: bool = False  # on a streamed request: 200, message_start, then an `error` event


def error(status: int, message: str | None = None, *, type: str | None = None, retry_after: float | None = None,
          should_retry: bool | None = None, in_stream: bool = False) -> Error:
    return Error(status, message, type, retry_after, should_retry, in_stream)


@dataclass
class Drop:
    partial: bool = False  # False: close before any byte; True: close in the middle of the answer
    then: Any = None  # with partial: the reply to cut short (default: a text reply)
    clean: bool = False  # with partial, on a stream: end the HTTP body properly, but before message_stop


def drop(partial: bool = False, then: Any = None, *, clean: bool = False) -> Drop:
    """Close the connection: before any answer, or (partial) halfway through one; with
    `clean`, a stream ends well-formed but early, as a gateway that gave up would end it."""
    return Drop(partial, then, clean)


@dataclass
class Delay:
    seconds: float
    step: Any


def delay(seconds: float, step: Any) -> Delay:
    return Delay(seconds, step)


EXHAUSTED = Error(500, "script exhausted: the scripted model server has no step left for this request",
                  should_retry=False)

# -- requests and usage -------------------------------------------------------------------


class Received(dict):
    """One request as received: the parsed JSON body (a dict) with .headers, .path, .api_key."""

    def __init__(self, body: dict, headers: dict[str, str], path: str, api_key: str | None, auth: str | None):
        super().__init__(body)
        self.headers = headers
        self.path = path
        self.api_key = api_key
        self.auth = auth  # "x-api-key", "bearer" or None


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def prompt_pieces(body: dict) -> tuple[list[str], list[int]]:
    """The prompt as canonical JSON pieces in cache order, and the breakpoints: for each block
    carrying cache_control, the number of pieces up to and including it."""
    pieces, breakpoints = [], []

    def add(where: str, block: Any) -> None:
        if isinstance(block, dict) and "cache_control" in block:
            block = {k: v for k, v in block.items() if k != "cache_control"}
            breakpoints.append(len(pieces) + 1)
        pieces.append(_canon([where, block]))

    for tool in body.get("tools") or []:
        add("tool", tool)
    system = body.get("system")
    if isinstance(system, str):
        add("system", text(system))
    elif isinstance(system, list):
        for block in system:
            add("system", block)
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content")
        for block in [text(content)] if isinstance(content, str) else content or []:
            add(f"{message.get('role')}:{i}", block)
    if body.get("cache_control") and pieces:  # automatic caching: a breakpoint on the last block
        breakpoints.append(len(pieces))
    return pieces, sorted(set(breakpoints))


# -- validation ---------------------------------------------------------------------------


def count_breakpoints(body: dict) -> int:
    n = sum(1 for t in body.get("tools") or [] if isinstance(t, dict) and "cache_control" in t)
    if isinstance(body.get("system"), list):
        n += sum(1 for b in body["system"] if isinstance(b, dict) and "cache_control" in b)
    for m in body.get("messages") or []:
        if isinstance(m, dict) and isinstance(m.get("content"), list):
            n += sum(1 for b in m["content"] if isinstance(b, dict) and "cache_control" in b)
    return n


def validate(body: Any) -> str | None:
    """The message of the 400 the real API would answer, or None when the request is fine."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        return "max_tokens: Input should be an integer greater than or equal to 1"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = m.get("content")
        if not isinstance(content, (str, list)):
            return f"messages.{i}.content: Input should be a valid string or list of content blocks"
        if isinstance(content, list):
            for k, b in enumerate(content):
                if not isinstance(b, dict) or "type" not in b:
                    return f"messages.{i}.content.{k}.type: Field required"
    if messages[0]["role"] != "user":
        return 'messages: first message must use the "user" role'
    for prev, m in zip(messages, messages[1:]):
        if prev["role"] == m["role"]:
            return (f'messages: roles must alternate between "user" and "assistant", '
                    f'but found multiple "{m["role"]}" roles in a row')

    def blocks(m: dict, kind: str) -> list[tuple[int, dict]]:
        c = m["content"]
        return [(k, b) for k, b in enumerate(c) if b.get("type") == kind] if isinstance(c, list) else []

    for i, m in enumerate(messages):
        if m["role"] == "user":
            used = {b.get("id") for _, b in blocks(messages[i - 1], "tool_use")} if i else set()
            for k, b in blocks(m, "tool_result"):
                if b.get("tool_use_id") not in used:
                    return (f"messages.{i}.content.{k}: unexpected `tool_use_id` found in `tool_result` blocks: "
                            f"{b.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                            f"`tool_use` block in the previous message.")
        elif i + 1 < len(messages):
            answered = {b.get("tool_use_id") for _, b in blocks(messages[i + 1], "tool_result")}
            missing = [b.get("id") for _, b in blocks(m, "tool_use") if b.get("id") not in answered]
            if missing:
                return (f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                        f"{', '.join(map(str, missing))}. Each `tool_use` block must have a corresponding "
                        f"`tool_result` block in the next message.")

    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list) or not all(
                isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str) for b in system):
            return "system: Input should be a valid string or a list of text blocks"
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        names = set()
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                return f"tools.{i}.name: Field required"
            kind = t.get("type", "custom")
            if kind == "custom":
                if not isinstance(t.get("input_schema"), dict):
                    return f"tools.{i}.custom.input_schema: Field required"
            elif kind in SERVER_TOOLS:
                if t["name"] != SERVER_TOOLS[kind]:
                    return f"tools.{i}.{kind}.name: Input should be '{SERVER_TOOLS[kind]}'"
            elif not VERSIONED_TYPE.match(kind):
                return f"tools.{i}: Input tag '{kind}' found using 'type' does not match any of the expected tags"
            if t["name"] in names:
                return f"tools: Tool names must be unique. Found duplicate: {t['name']}"
            names.add(t["name"])
    n = count_breakpoints(body)
    if n > MAX_BREAKPOINTS:
        return f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {n}."
    return None


# -- the server ---------------------------------------------------------------------------


class ScriptedModel:
    """The scripted Messages API. Use as a context manager or call close(); both stop the
    server thread, cut open connections and wait for every handler thread to end."""

    def __init__(self, script: list | tuple = (), *, min_cache_tokens: int = 0, chunk_chars: int = 8):
        self.script = list(script)
        self.requests: list[Received] = []
        self.usages: list[dict] = []  # the usage of every reply served, in order
        self.errors: list[BaseException] = []  # exceptions raised by script steps (test bugs)
        self.min_cache_tokens = min_cache_tokens  # shorter breakpoint prefixes are not cached
        self.chunk_chars = chunk_chars  # size of the streamed text / input_json deltas
        self._cached: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._ids = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"modelserver-{self.port}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_keys(self) -> list[str | None]:
        """The key each request carried, in order."""
        return [r.api_key for r in self.requests]

    def add(self, *steps: Any) -> None:
        with self._lock:
            self.script.extend(steps)

    def close(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:  # a keep-alive connection would hold its handler thread
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()  # joins the handler threads
        self._thread.join()

    def __enter__(self) -> ScriptedModel:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- called from handler threads ----------------------------------------------------

    def _next_step(self, body: dict) -> Any:
        with self._lock:
            return self.script.pop(0) if self.script else EXHAUSTED

    def _usage(self, body: dict, blocks: list[dict]) -> dict:
        pieces, breakpoints = prompt_pieces(body)
        cum, digests = [0], []
        h = hashlib.sha256(_canon(body.get("model")).encode())
        digests.append(h.hexdigest())
        for p in pieces:
            cum.append(cum[-1] + len(p))
            h.update(p.encode() + b"\n")
            digests.append(h.hexdigest())
        breakpoints = [b for b in breakpoints if _tokens(cum[b]) >= self.min_cache_tokens]
        read_end = 0
        with self._lock:
            for bp in breakpoints:
                for k in range(bp, max(0, bp - LOOKBACK_BLOCKS), -1):
                    if digests[k] in self._cached:
                        read_end = max(read_end, k)
                        break
            self._cached.update(digests[bp] for bp in breakpoints)
        cached_end = breakpoints[-1] if breakpoints else 0
        read = _tokens(cum[read_end])
        return {
            "input_tokens": _tokens(cum[-1]) - _tokens(cum[cached_end]),
            "cache_creation_input_tokens": _tokens(cum[cached_end]) - read,
            "cache_read_input_tokens": read,
            "output_tokens": max(1, _tokens(len(_canon(blocks)))),
        }

    def _message(self, body: dict, r: Reply, *, served: bool = True) -> dict:
        usage = self._usage(body, r.blocks)
        usage.update(r.usage or {})
        if served:  # a reply cut short still wrote the cache, but was not delivered
            with self._lock:
                self.usages.append(usage)
        stop = r.stop_reason or ("tool_use" if any(b["type"] == "tool_use" for b in r.blocks) else "end_turn")
        return {"id": f"msg_scripted{next(self._ids):06d}", "type": "message", "role": "assistant",
                "model": body["model"], "content": r.blocks, "stop_reason": stop, "stop_sequence": None,
                "usage": usage}

    def _events(self, message: dict) -> list[tuple[str, dict]]:
        """The SSE events the real API streams for `message`."""
        n = self.chunk_chars
        usage = message["usage"]
        start = dict(message, content=[], stop_reason=None, stop_sequence=None, usage=dict(usage, output_tokens=1))
        events = [("message_start", {"type": "message_start", "message": start}), ("ping", {"type": "ping"})]
        for i, block in enumerate(message["content"]):
            if block["type"] == "tool_use":
                events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                       "content_block": dict(block, input={})}))
                # a str input is sent as it is: a model's tool input that is not valid JSON
                raw = block["input"] if isinstance(block["input"], str) else json.dumps(block["input"])
                deltas = [{"type": "input_json_delta", "partial_json": raw[k:k + n]} for k in range(0, len(raw), n)]
            else:
                events.append(("content_block_start", {"type": "content_block_start", "index": i,
                                                       "content_block": dict(block, text="")}))
                s = block["text"]
                deltas = [{"type": "text_delta", "text": s[k:k + n]} for k in range(0, len(s), n)]
            events += [("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d})
                       for d in deltas]
            events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                         "usage": usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events


def _error_body(status: int, message: str | None, kind: str | None) -> dict:
    kind = kind or ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": message or ERROR_MESSAGES.get(status, kind)},
            "request_id": "req_scripted" + secrets.token_hex(6)}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as the SDK's pool expects
    timeout = 30  # an idle keep-alive connection ends its thread after this

    server: ThreadingHTTPServer

    @property
    def owner(self) -> ScriptedModel:
        return self.server.owner  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._conns.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # -- writing ------------------------------------------------------------------------

    def _json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", obj.get("request_id") or obj.get("id") or "req_scripted")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: Error) -> None:
        headers = {}
        if e.retry_after is not None:
            headers["retry-after"] = str(e.retry_after)
        if e.should_retry is not None:
            headers["x-should-retry"] = "true" if e.should_retry else "false"
        self._json(e.status, _error_body(e.status, e.message, e.type), headers)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", "req_scripted" + secrets.token_hex(6))
        self.end_headers()

    def _event(self, name: str, data: dict) -> None:
        payload = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _cut(self) -> None:
        """Drop the connection here, as a failing network or proxy would."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- answering ----------------------------------------------------------------------

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self._json(404, _error_body(404, f"no route for GET {self.path}", None))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        key, auth = headers.get("x-api-key"), "x-api-key"
        if not key and headers.get("authorization", "").lower().startswith("bearer "):
            key, auth = headers["authorization"][7:].strip(), "bearer"
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        received = Received(body if isinstance(body, dict) else {}, headers, self.path, key or None,
                            auth if key else None)
        with self.owner._lock:
            self.owner.requests.append(received)

        if self.path.split("?")[0] != "/v1/messages":
            return self._json(404, _error_body(404, f"no route for POST {self.path}", None))
        if not key:
            return self._error(Error(401, "x-api-key header is required"))
        if "anthropic-version" not in headers:
            return self._error(Error(400, "anthropic-version: header is required"))
        if body is None:
            return self._error(Error(400, "request body is not valid JSON"))
        problem = validate(body)
        if problem:
            return self._error(Error(400, problem))

        try:
            self._answer(body, self.owner._next_step(body), stream=bool(body.get("stream")))
        except OSError:  # the client went away (timed out, closed): nothing left to answer
            self.close_connection = True
        except Exception as e:  # a broken step (a test bug) must fail the test, not look like a network error
            with self.owner._lock:
                self.owner.errors.append(e)
            self._error(Error(500, f"script step raised {type(e).__name__}: {e}", should_retry=False))

    def _answer(self, body: dict, step: Any, *, stream: bool) -> None:
        while True:
            if isinstance(step, Delay):
                if self.owner._stopping.wait(step.seconds):
                    return self._cut()
                step = step.step
            elif callable(step):
                step = step(body)
            else:
                break
        if isinstance(step, str):
            step = reply(step)
        elif isinstance(step, dict):
            step = Reply([step])
        if isinstance(step, Error):
            if not (step.in_stream and stream):
                return self._error(step)
            start = {"id": f"msg_scripted{next(self.owner._ids):06d}", "type": "message", "role": "assistant",
                     "model": body["model"], "content": [], "stop_reason": None, "stop_sequence": None,
                     "usage": {"input_tokens": 0, "output_tokens": 0}}
            self._start_stream()
            self._event("message_start", {"type": "message_start", "message": start})
            self._event("error", _error_body(step.status, step.message, step.type))
            return self._end_stream()
        if isinstance(step, Drop):
            if not step.partial:
                return self._cut()
            clean = step.clean
            step = step.then or reply("this answer is cut short by a dropped connection")
            if isinstance(step, (str, dict)):
                step = reply(step)
            message = self.owner._message(body, step, served=False)
            if stream:
                self._start_stream()
                events = self.owner._events(message)
                for name, data in events[:max(1, len(events) // 2)]:
                    self._event(name, data)
                if clean:
                    return self._end_stream()
            else:
                data = json.dumps(message).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2])
            return self._cut()
        if not isinstance(step, Reply):
            raise TypeError(f"modelserver: not a script step: {step!r}")
        message = self.owner._message(body, step)
        if not stream:
            return self._json(200, message)
        self._start_stream()
        for name, data in self.owner._events(message):
            self._event(name, data)
        self._end_stream()
