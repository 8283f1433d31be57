"""The agent loop: the model proposes tool calls, the sandbox runs them, budgets stop it.

The loop runs on the host; only the tools' effects happen in the container. Tools are
Anthropic's own bash and text-editor tools (the tool types the models are trained on)
plus, for sensors and adversaries, report_finding, and for the postmortem agent
report_postmortem. Every turn ends in one of: the model answers without a tool call
(ok), the postmortem agent reports its postmortem (ok), a budget runs out (budget /
timeout), the same calls keep coming back with the same results (stuck), the model
cannot be reached after retries (error), or the container is gone (failed).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from . import editor
from .model import ModelError, Usage, cost

BASH_TOOL = {"type": "bash_20250124", "name": "bash"}
EDITOR_TOOL = editor.TOOL
FINDING_TOOL = {
    "name": "report_finding",
    "description": "Report one finding: a difference between what the repository is meant to be and "
                   "what it is, or a failure you can demonstrate. One call per finding.",
    "input_schema": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "description": "One line naming the problem."},
            "body": {"type": "string", "description": "The evidence and what should happen instead."},
            "severity": {"type": "string", "enum": ["low", "medium", "high", "critical"]},
            "fingerprint": {"type": "string", "description": "A stable name for this problem, the same every "
                                                             "time it is seen (e.g. file:function:symptom)."},
            "evidence": {"type": "string", "description": "What shows it: output, or the lines it is about, "
                                                          "quoted exactly."},
            "reproduction": {"type": "string", "description": "A shell command, run from /workspace/repo, "
                                                              "that exits non-zero because of the problem."},
        },
        "required": ["title", "body", "severity", "fingerprint"],
    },
}

_PROSE = {"type": "string"}
POSTMORTEM_TOOL = {
    "name": "report_postmortem",
    "description": "Report the postmortem of the failure you were shown, and the one lesson it teaches. "
                   "Call it once, when you know the root cause; it ends your run. Be blameless and "
                   "concrete: name files, commands and what they printed.",
    "input_schema": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "description": "One line naming what went wrong."},
            "what_was_tried": {**_PROSE, "description": "What the agent set out to do, and how."},
            "what_failed": {**_PROSE, "description": "What failed, with the evidence (the check, its output)."},
            "root_cause": {**_PROSE, "description": "Why it failed: the cause, not the symptom."},
            "contributing_factors": {"type": "array", "items": {"type": "string"}, "maxItems": 10,
                                     "description": "What made it likelier or harder to see (at most 10)."},
            "what_should_have_happened": {**_PROSE, "description": "What the agent should have done instead."},
            "lesson": {
                "type": "object",
                "description": "One rule for every later agent.",
                "properties": {
                    "kind": {"type": "string", "enum": ["principle", "prohibition"]},
                    "title": {"type": "string", "description": "A short title for the rule (one line)."},
                    "text": {"type": "string", "description": "The rule and why it matters, in a few sentences, "
                                                              "addressed to an agent."},
                    "check": {"type": ["string", "null"],
                              "description": "For a prohibition: one shell command, run at the top of the "
                                             "repository, that exits non-zero when the rule is broken and 0 "
                                             "when it holds (it must fail on this commit and pass on the base "
                                             "commit, or the lesson becomes a principle). Null otherwise."},
                },
                "required": ["kind", "title", "text", "check"],
            },
        },
        "required": ["title", "what_was_tried", "what_failed", "root_cause", "contributing_factors",
                     "what_should_have_happened", "lesson"],
    },
}

REPO_DIR = editor.REPO_DIR     # where the repository is checked out in the container
TOOL_TIMEOUT_S = 300          # one bash call, at most (less when the wall budget is nearer)
TOOL_OUTPUT_BYTES = 30_000    # what a tool result may carry back to the model
STUCK_REPEATS = 3             # the same calls with the same results this many turns running
CWD_MARK = "\x1efactory-cwd:"


def tools_for(kind: str) -> list[dict]:
    extra = {"sensor": [FINDING_TOOL], "adversary": [FINDING_TOOL], "postmortem": [POSTMORTEM_TOOL]}
    return [BASH_TOOL, EDITOR_TOOL] + extra.get(kind, [])


@dataclass
class Budgets:
    turns: int
    tokens: int
    cost_usd: float
    wall_seconds: float


@dataclass
class Outcome:
    status: str                   # ok | budget | timeout | stuck | error | failed
    reason: str
    turns: int = 0
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    findings: list = field(default_factory=list)
    findings_refused: int = 0     # report_finding calls refused as malformed (the model was told)
    postmortem: dict | None = None  # the postmortem agent's report, once it made a valid one
    transcript: list = field(default_factory=list)
    model_retries: int = 0       # retries of model requests, the failed last request's included
    infra: bool = False           # the factory's trouble, not the task's (the API key was refused)
    first_request_at: float | None = None   # time.monotonic() when the first request went out
    last_answer_at: float | None = None     # time.monotonic() of the last model answer


class ContainerGone(Exception):
    pass


class ToolsUnavailable(Exception):
    """The tools cannot run at all (the checkout they work on could not be made): the
    run ends as an error, not as the model's failure."""


class Agent:
    def __init__(self, model, sandbox, *, kind: str, system: list[dict], budgets: Budgets,
                 started: float | None = None, log=lambda msg: None, on_turn=lambda outcome: None,
                 before_tools=None):
        self.model = model
        self.sandbox = sandbox
        self.kind = kind
        self.system = system
        self.tools = tools_for(kind)
        self.budgets = budgets
        self.started = started if started is not None else time.monotonic()
        self.deadline = self.started + budgets.wall_seconds
        self.log = log
        self.on_turn = on_turn
        self.cwd = REPO_DIR
        self.findings: list[dict] = []
        self.findings_refused = 0
        self.postmortem: dict | None = None
        self.editor = editor.Editor(sandbox)
        # Called once before the first tool runs: the checkout is made while the first
        # model request is on its way, off the critical path (may raise ToolsUnavailable).
        self.before_tools = before_tools

    # -- the loop ------------------------------------------------------------------

    def run(self, first_message: str) -> Outcome:
        from .sandbox import EngineUnavailable
        out = Outcome(status="ok", reason="")
        messages = [{"role": "user", "content": [{"type": "text", "text": first_message}]}]
        out.transcript = messages
        seen: list[str] = []
        while True:
            stop = self._over_budget(out)
            if stop:
                out.status, out.reason = stop
                break
            self._move_cache_breakpoint(messages)
            if out.first_request_at is None:
                out.first_request_at = time.monotonic()
            try:
                self.model.deadline = self.deadline
                reply = self.model.send(system=self.system, messages=messages, tools=self.tools)
            except ModelError as e:
                out.status = "timeout" if e.kind == "deadline" else "error"
                out.reason = f"model: {e}"
                out.model_retries += e.retries
                out.infra = e.kind == "auth"  # the operator's key, not the issue: never an attempt
                break
            out.last_answer_at = time.monotonic()
            out.turns += 1
            out.usage = out.usage + reply.usage
            out.model_retries += reply.retries
            out.cost_usd = cost(self.model.name, out.usage)
            self.on_turn(out)
            messages.append({"role": "assistant", "content": reply.content})
            calls = [b for b in reply.content if b.get("type") == "tool_use"]
            if not calls:
                if reply.stop_reason == "refusal":
                    out.status, out.reason = "failed", "the model refused the task"
                else:
                    out.status, out.reason = "ok", _text_of(reply.content)[:2000] or "the agent finished"
                break
            try:
                if self.before_tools is not None:
                    ready, self.before_tools = self.before_tools, None
                    ready()
                results = [self._call(c) for c in calls]
            except ContainerGone as e:
                out.status, out.reason = "failed", str(e)
                break
            except ToolsUnavailable as e:
                out.status, out.reason = "error", str(e)
                break
            except EngineUnavailable as e:  # no tool can run; the caller tells whose fault it is
                out.status, out.reason = "error", str(e)
                break
            messages.append({"role": "user", "content": results})
            if self.postmortem is not None:  # its one job is done: no turn is spent on a closing word
                out.status, out.reason = "ok", "the postmortem was reported"
                break
            signature = json.dumps([[c["name"], c["input"]] for c in calls] +
                                   [r["content"] for r in results], sort_keys=True)
            seen.append(signature)
            if len(seen) >= STUCK_REPEATS and len(set(seen[-STUCK_REPEATS:])) == 1:
                out.status = "stuck"
                out.reason = f"the same tool calls returned the same results {STUCK_REPEATS} turns running"
                break
        self._strip_cache_breakpoints(messages)
        out.findings = self.findings
        out.findings_refused = self.findings_refused
        out.postmortem = self.postmortem
        return out

    def _over_budget(self, out: Outcome):
        b = self.budgets
        if time.monotonic() >= self.deadline:
            return "timeout", f"wall time budget of {b.wall_seconds:g} s used up"
        if out.turns >= b.turns:
            return "budget", f"turn budget of {b.turns} used up"
        if out.usage.total_tokens >= b.tokens:
            return "budget", f"token budget of {b.tokens} used up ({out.usage.total_tokens})"
        if out.cost_usd >= b.cost_usd:
            return "budget", f"cost budget of ${b.cost_usd:g} used up (${out.cost_usd:.4f})"
        return None

    @staticmethod
    def _move_cache_breakpoint(messages):
        """One rolling breakpoint on the newest block, so each turn reads all earlier turns
        from the cache (with the system prompt's, two of the API's four breakpoints)."""
        Agent._strip_cache_breakpoints(messages)
        last = messages[-1]["content"][-1]
        last["cache_control"] = {"type": "ephemeral"}

    @staticmethod
    def _strip_cache_breakpoints(messages):
        for m in messages:
            if isinstance(m["content"], list):
                for block in m["content"]:
                    if isinstance(block, dict):
                        block.pop("cache_control", None)

    # -- tools ---------------------------------------------------------------------

    def _call(self, call: dict) -> dict:
        from .sandbox import EngineUnavailable, SandboxGone
        name, args = call["name"], call.get("input")
        args = {} if args is None else args
        try:
            if not isinstance(args, dict):
                raise ToolInputError(f"the input of {name} must be an object of named parameters")
            if name == "bash":
                text, is_error = self._bash(args)
            elif name == "str_replace_based_edit_tool":
                text, is_error = self.editor(args), False
            elif name == "report_finding" and "report_finding" in {t["name"] for t in self.tools}:
                text, is_error = self._finding(args)
            elif name == "report_postmortem" and "report_postmortem" in {t["name"] for t in self.tools}:
                text, is_error = self._postmortem(args)
            else:
                text, is_error = (f"there is no tool named {name!r}; the tools are "
                                  f"{', '.join(t['name'] for t in self.tools)}"), True
        except (ContainerGone, EngineUnavailable):
            raise  # the run ends: no later call can work either, and it is not the model's doing
        except SandboxGone as e:
            raise ContainerGone(f"the container is gone (killed from outside, or past its deadline): {e}")
        except (ToolInputError, editor.EditorError) as e:
            text, is_error = str(e), True
            if name == "report_finding":
                self.findings_refused += 1
        except Exception as e:
            # A failure of factory's own, not of the call: the model is told, the run goes on
            # (a crash here would end it with nothing to show), and the log keeps the cause.
            self.log(f"tool {name}: internal error: {type(e).__name__}: {e}")
            text, is_error = (f"the tool failed inside factory ({type(e).__name__}: {e}); this is not a fault "
                              "of your call. Try again, or another way (e.g. bash)."), True
        self.log(f"tool {name}: {'error' if is_error else 'ok'}")
        result = {"type": "tool_result", "tool_use_id": call["id"], "content": text or "(no output)"}
        if is_error:
            result["is_error"] = True
        return result

    def _exec(self, command: str, timeout: float):
        from .sandbox import SandboxGone
        try:
            return self.sandbox.exec(command, timeout=timeout, workdir=REPO_DIR, max_output=TOOL_OUTPUT_BYTES)
        except SandboxGone as e:
            raise ContainerGone(f"the container is gone (killed from outside, or past its deadline): {e}")

    def _bash(self, args: dict):
        command = args.get("command")
        if args.get("restart") in (True, "true", "True"):
            self.cwd = REPO_DIR
            restarted = (f"The shell was restarted: the working directory is {REPO_DIR} again. (Every call "
                         "runs in a fresh bash anyway; only the directory carries over between calls.)")
            if not isinstance(command, str) or not command.strip():
                return restarted, False
            text, is_error = self._bash({"command": command})
            return restarted + "\n" + text, is_error
        if command is None:
            raise ToolInputError("bash needs `command`: a string, the shell command to run "
                                 "(or `restart: true` to restart the shell)")
        if not isinstance(command, str):
            raise ToolInputError(f"bash's `command` must be a string, the shell command to run "
                                 f"(got {type(command).__name__}: {str(command)[:60]})")
        if not command.strip():
            raise ToolInputError("bash's `command` is empty: give the shell command to run")
        remaining = self.deadline - time.monotonic()
        timeout = max(1.0, min(TOOL_TIMEOUT_S, remaining))
        # Each call is its own bash; carry the working directory over as a session would.
        wrapped = (f"cd {_quote(self.cwd)} 2>/dev/null || cd {REPO_DIR}\n{command}\n"
                   f"__rc=$?; printf '\\n{CWD_MARK}%s\\n' \"$PWD\"; exit $__rc")
        r = self._exec(wrapped, timeout)
        output = r.output
        mark = output.rfind(CWD_MARK)
        if mark != -1:
            self.cwd = output[mark + len(CWD_MARK):].strip() or self.cwd
            output = output[:mark].rstrip("\n")
        if r.timed_out:
            return f"{output}\n[the command was stopped after {timeout:.0f} s]", True
        return (output + (f"\n[exit code {r.exit_code}]" if r.exit_code else "")).strip("\n"), bool(r.exit_code)

    def _finding(self, args: dict):
        """Record one finding, its fields checked against the tool's schema: a malformed
        call is refused and the model told why, so it can call again."""
        props = FINDING_TOOL["input_schema"]["properties"]
        missing = [k for k in FINDING_TOOL["input_schema"]["required"] if args.get(k) is None]
        if missing:
            raise ToolInputError(f"report_finding needs {', '.join(missing)}; the finding was not recorded")
        for k, v in args.items():
            if k not in props:
                raise ToolInputError(f"report_finding has no parameter `{k}` (its parameters: {', '.join(props)}); "
                                     "the finding was not recorded")
            if v is not None and not isinstance(v, str):
                raise ToolInputError(f"report_finding's `{k}` must be a string, not {type(v).__name__}"
                                     + (" (one shell command line)" if k == "reproduction" else "")
                                     + "; the finding was not recorded")
        if args["severity"] not in props["severity"]["enum"]:
            raise ToolInputError(f"report_finding's `severity` must be one of {', '.join(props['severity']['enum'])}, "
                                 f"not {args['severity'][:40]!r}; the finding was not recorded")
        if self.kind == "adversary" and not (args.get("reproduction") or "").strip():
            return "an adversary's finding needs a `reproduction` command; it was not recorded", True
        finding = {k: args[k] for k in props if args.get(k)}
        self.findings.append(finding)
        return f"recorded finding {len(self.findings)}: {finding['title']}", False

    def _postmortem(self, args: dict):
        from .contracts import ContractError, validate_postmortem_report
        try:
            report = validate_postmortem_report(args)
        except ContractError as e:
            return f"the postmortem was not recorded: {e}. Call report_postmortem again with it fixed.", True
        self.postmortem = report
        return "recorded the postmortem", False


class ToolInputError(Exception):
    """The model called a tool wrongly; it is told, and the run goes on."""


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _text_of(content: list[dict]) -> str:
    return "\n".join(b.get("text", "") for b in content if b.get("type") == "text").strip()



