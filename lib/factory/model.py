"""The only caller of the model: the Anthropic Messages API through the `anthropic` SDK.

This module owns the seam between factory and the model: one call (`Model.send`) that
streams a reply and returns it as plain dicts, the retries (ours, not the SDK's, so the
deadline and the count of retries are ours too), the classification of failures into a
few kinds a caller can act on, token usage, and what it costs.

The SDK is imported inside functions only: importing it takes over half a second, which
`--help` and every tool that never talks to the model must not pay.

The API key is read here and handed to the SDK; it never appears in an exception message
or a log line written here (errors are raised `from None` with the key redacted, so not
even the SDK's exception, which may quote a response body, rides along as the cause).
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

KINDS = ("rate_limited", "overloaded", "connection", "server", "bad_request", "auth", "deadline")
DEFAULT_TIMEOUT = 600.0  # seconds of silence tolerated on a stream (the API sends pings meanwhile)
CONNECT_TIMEOUT = 10.0
RETRY_AFTER_CAP = 300.0  # a retry-after beyond this is not believed; the deadline still bounds it


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    add = __add__

    def astuple(self) -> tuple[int, int, int, int]:
        return (self.input_tokens, self.output_tokens, self.cache_creation_input_tokens,
                self.cache_read_input_tokens)

    @property
    def total_tokens(self) -> int:
        return sum(self.astuple())

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# USD per million tokens: (input, output), by model-name prefix; the longest prefix wins, so
# dated names ("claude-sonnet-4-5-20250929") and aliases find their family. Cache writes
# (5-minute) cost 1.25x input and cache reads 0.1x input.
PRICES: dict[str, tuple[float, float]] = {
    "claude-sonnet-4": (3.0, 15.0),
    "claude-4-sonnet": (3.0, 15.0),
    "claude-opus-4": (5.0, 25.0),  # Opus 4.5 and later
    "claude-opus-4-0": (15.0, 75.0),
    "claude-opus-4-2025": (15.0, 75.0),  # claude-opus-4-20250514, the first Opus 4
    "claude-4-opus": (15.0, 75.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-haiku-4": (1.0, 5.0),
}
CACHE_WRITE_FACTOR = 1.25
CACHE_READ_FACTOR = 0.1
# An unknown model is priced as Sonnet: the middle of the range, so a budget neither
# stops a cheap model absurdly early nor lets an expensive one run five times over.
UNKNOWN_MODEL_PRICE = PRICES["claude-sonnet-4"]


def price(model_name: str) -> tuple[float, float]:
    """(input, output) USD per million tokens for a model name."""
    matches = [p for p in PRICES if model_name.startswith(p)]
    return PRICES[max(matches, key=len)] if matches else UNKNOWN_MODEL_PRICE


def cost(model_name: str, usage: Usage) -> float:
    """What `usage` cost in USD on `model_name`."""
    inp, out = price(model_name)
    return (usage.input_tokens * inp + usage.output_tokens * out
            + usage.cache_creation_input_tokens * inp * CACHE_WRITE_FACTOR
            + usage.cache_read_input_tokens * inp * CACHE_READ_FACTOR) / 1_000_000


class ModelError(Exception):
    """The model could not answer. `kind` is one of KINDS; `status` the HTTP status, if any."""

    def __init__(self, kind: str, message: str, *, status: int | None = None, retries: int = 0,
                 request_id: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retries = retries
        self.request_id = request_id


@dataclass
class Reply:
    content: list[dict]  # the content blocks as the API sends them: {"type": "text", ...}, {"type": "tool_use", ...}
    stop_reason: str | None
    usage: Usage
    retries: int = 0  # how many retries this call needed
    id: str | None = None
    model: str | None = None


@dataclass
class _Failure:
    """One failed attempt, classified."""

    kind: str
    detail: str
    retryable: bool
    status: int | None = None
    retry_after: float | None = None
    request_id: str | None = None


class _IncompleteStream(Exception):
    """The stream ended without message_stop: the connection closed early."""


class Model:
    """One model endpoint. `send` one conversation at a time; `close` when done."""

    def __init__(self, name: str, max_tokens: int, *, api_key: str | None = None, base_url: str | None = None,
                 deadline: float | None = None, max_retries: int = 6, backoff_base: float = 0.5,
                 backoff_cap: float = 20.0, sleep: Callable[[float], None] = time.sleep,
                 timeout: float = DEFAULT_TIMEOUT):
        api_key = api_key or os.environ.get("ANTHROPIC_API_KEY") or None
        if not api_key:
            raise ModelError("auth", "no API key for the model (set ANTHROPIC_API_KEY)")
        self.name = name
        self.max_tokens = max_tokens
        self.deadline = deadline  # time.monotonic() value after which no attempt starts
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.sleep = sleep
        self.timeout = timeout
        self._key = api_key
        import anthropic

        # max_retries=0: the SDK's own retries would sleep past our deadline and hide from our count.
        # The key is passed explicitly, which also keeps the SDK from looking for credential files.
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url or os.environ.get("ANTHROPIC_BASE_URL"),
                                           max_retries=0, timeout=anthropic.Timeout(timeout, connect=CONNECT_TIMEOUT))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send(self, *, messages: list[dict], system: str | list[dict] | None = None,
             tools: list[dict] | None = None, max_tokens: int | None = None) -> Reply:
        """Ask the model for the next assistant turn. Raises ModelError (see KINDS)."""
        params: dict[str, Any] = {"model": self.name, "max_tokens": max_tokens or self.max_tokens,
                                  "messages": messages}
        if system is not None:
            params["system"] = system
        if tools is not None:
            params["tools"] = tools
        retries, last = 0, None
        while True:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                f = last or _Failure("deadline", "no attempt was made", False)
                raise self._error(f, retries, "the deadline had passed", kind="deadline")
            try:
                message = self._attempt(params)
            except ModelError as e:  # the deadline passed mid-stream
                e.retries = retries
                raise
            except Exception as e:
                failure = last = self._classify(e)
                if failure is None:
                    raise
                if not failure.retryable:
                    raise self._error(failure, retries) from None
                if retries >= self.max_retries:
                    raise self._error(failure, retries, f"after {retries} retries") from None
                wait = self._backoff(retries, failure.retry_after)
                if self.deadline is not None and time.monotonic() + wait >= self.deadline:
                    raise self._error(failure, retries, f"the next retry (in {wait:.1f}s) would pass the deadline",
                                      kind="deadline") from None
                self.sleep(wait)
                retries += 1
                continue
            u = message.usage
            usage = Usage(u.input_tokens or 0, u.output_tokens or 0, u.cache_creation_input_tokens or 0,
                          u.cache_read_input_tokens or 0)
            return Reply([_plain(b) for b in message.content], message.stop_reason, usage, retries,
                         message.id, message.model)

    # -- one attempt ----------------------------------------------------------------------

    def _attempt(self, params: dict) -> Any:
        # Streaming, not a plain request: the API answers long generations only on a stream
        # (and the SDK refuses plain requests it expects to take over 10 minutes), and a
        # stream's read timeout measures silence, not the length of the answer.
        timeout = self.timeout
        if self.deadline is not None:
            timeout = max(0.001, min(timeout, self.deadline - time.monotonic()))
        with self._client.messages.stream(**params, timeout=timeout) as stream:
            for _ in stream:
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise ModelError("deadline", f"model '{self.name}': the deadline passed while the reply "
                                                 "was streaming; the partial reply was discarded")
            message = stream.get_final_message()
        if message.stop_reason is None:  # no message_delta: the stream was cut short
            raise _IncompleteStream("the stream ended before the message was complete")
        return message

    def _classify(self, e: Exception) -> _Failure | None:
        """What kind of failure `e` is, or None when it is not one of the model's (a bug)."""
        import anthropic
        import httpx2  # the SDK's HTTP library: a stream that breaks mid-read raises its errors unwrapped

        if isinstance(e, anthropic.APIStatusError):
            status, etype = e.status_code, e.type or ""
            headers = e.response.headers
            detail = f"HTTP {status} {etype}: {e.api_message or 'no message'}".strip()
            if status == 200:  # an `error` event in the middle of a stream
                detail = f"{etype} during the stream: {e.api_message or 'no message'}"
            if status == 429 or etype == "rate_limit_error":
                kind, retryable = "rate_limited", True
            elif status == 529 or etype == "overloaded_error":
                kind, retryable = "overloaded", True
            elif status >= 500 or etype in ("api_error", "timeout_error"):
                kind, retryable = "server", True
            elif status in (401, 403) or etype in ("authentication_error", "permission_error", "billing_error"):
                kind, retryable = "auth", False
            elif status == 408:
                kind, retryable = "connection", True
            else:
                kind, retryable = "bad_request", False
            if headers.get("x-should-retry") == "false":  # the server knows better than the status
                retryable = False
            return _Failure(kind, detail, retryable, status, _retry_after(headers), e.request_id)
        if isinstance(e, anthropic.APITimeoutError):
            return _Failure("connection", "the request timed out", True)
        if isinstance(e, anthropic.APIConnectionError):
            cause = type(e.__cause__).__name__ if e.__cause__ else "unknown"
            return _Failure("connection", f"connection failed ({cause})", True)
        if isinstance(e, httpx2.TimeoutException):  # raised while reading the stream, unwrapped by the SDK
            return _Failure("connection", "the stream timed out", True)
        if isinstance(e, httpx2.TransportError):
            return _Failure("connection", f"the connection dropped during the stream ({type(e).__name__})", True)
        if isinstance(e, _IncompleteStream):
            return _Failure("connection", str(e), True)
        if isinstance(e, ValueError) and str(e).startswith("Unable to parse tool parameter JSON"):
            # The SDK's own advice is to ask again. Its message quotes the broken input:
            # not repeated here, as model output it is nobody's instructions.
            return _Failure("server", "the model sent tool input that is not valid JSON", True)
        return None

    def _backoff(self, retries: int, retry_after: float | None) -> float:
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, RETRY_AFTER_CAP)
        # Exponential with "equal jitter": at least half the step, so waits still grow, and
        # never in lockstep with the other agents that hit the same limit.
        step = min(self.backoff_cap, self.backoff_base * 2 ** retries)
        return step / 2 + random.uniform(0, step / 2)

    def _error(self, f: _Failure, retries: int, why: str | None = None, kind: str | None = None) -> ModelError:
        advice = {
            "rate_limited": "lower the concurrency or raise the rate limit",
            "overloaded": "the API is overloaded; try again later",
            "connection": f"check that {self._client.base_url} is reachable",
            "server": "the API failed; try again later",
            "bad_request": "the request was refused as it was; fix it rather than retry",
            "auth": "check ANTHROPIC_API_KEY and the key's permissions",
            "deadline": "the run's deadline leaves no time to retry",
        }[kind or f.kind]
        text = f"model '{self.name}': {kind or f.kind}: {f.detail}"
        if why:
            text += f"; gave up: {why}"
        if f.request_id:
            text += f" (request-id {f.request_id})"
        text = f"{text} ({advice})".replace(self._key, "[REDACTED]")
        return ModelError(kind or f.kind, text, status=f.status, retries=retries, request_id=f.request_id)


def _plain(block: Any) -> dict:
    """A content block as the plain dict the API sent: JSON types, no null extras."""
    return {k: v for k, v in block.model_dump(mode="json").items() if v is not None}


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asks us to wait (retry-after-ms, retry-after in seconds or as a date)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) * scale
        except ValueError:
            pass
        when = email.utils.parsedate_tz(value)
        if when is not None:
            return max(0.0, email.utils.mktime_tz(when) - time.time())
    return None
