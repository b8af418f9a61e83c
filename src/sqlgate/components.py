"""FastMCP components backed by sqlgate endpoints and built-in tools.

Arguments are validated here against the declared JSON schema (jsonschema), so the inputSchema
clients see is exactly the one enforced. Every failure becomes an MCP error result with a clear
message — never an internal error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastmcp.exceptions import PromptError, ResourceError, ToolError
from fastmcp.prompts.base import Message, Prompt, PromptArgument, PromptResult
from fastmcp.resources.base import Resource
from fastmcp.resources.template import ResourceTemplate
from fastmcp.tools.base import Tool, ToolResult
from jsonschema import Draft202012Validator
from mcp.types import TextContent, ToolAnnotations
from pydantic import PrivateAttr

from sqlgate import answers
from sqlgate.audit.notes import note_answer, note_error
from sqlgate.errors import AnswerMismatch, DatabaseUnavailable, InvalidArguments, QueryTimeout, SqlgateError

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
log = logging.getLogger("sqlgate.answers")


dumps = answers.dumps  # the encoding whose size the answer budget counts


# an error text is part of the answer too: a 5 MB engine message must not become a 5 MB reply
MAX_ERROR_CHARS = 2000


def error_text(exc: SqlgateError) -> str:
    text = str(exc)
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + f"… (error message cut: {len(text) - MAX_ERROR_CHARS:,} more characters)"
    return text


def error_log_level(exc: SqlgateError) -> int:
    """A caller's mistake is one INFO line; a timeout a WARNING; only an outage is an ERROR."""
    if isinstance(exc, DatabaseUnavailable):
        return logging.ERROR
    if isinstance(exc, QueryTimeout | AnswerMismatch):  # an answer the endpoint's author must fix
        return logging.WARNING
    return logging.INFO


def check_arguments(validator: Draft202012Validator, arguments: dict[str, Any], what: str) -> None:
    problems = []
    for err in sorted(validator.iter_errors(arguments), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in err.path)
        problems.append(f"{where}: {err.message}" if where else err.message)
    if problems:
        raise InvalidArguments(f"invalid arguments for {what}: " + "; ".join(problems))


def answer_result(out: dict[str, Any]) -> ToolResult:
    """The tool result of an answer: its JSON text (encoded once) and the answer as structuredContent.

    Built without ToolResult's validating constructor: that walks every value of the answer through
    pydantic to make it JSON-able (4-5 ms for 1,000 rows x 10 columns), and the engines' values are
    JSON-ready by construction (engine/values.py). The shape still matches the declared
    outputSchema: tests validate it (tests/test_answers.py)."""
    return ToolResult.model_construct(content=[TextContent(type="text", text=dumps(out))], structured_content=out,
                                      meta=None, is_error=False)


def check_answer(validator: Draft202012Validator, answer: dict[str, Any], tool: str) -> None:
    problems = []
    for err in sorted(validator.iter_errors(answer), key=lambda e: list(e.path))[:5]:
        where = "/".join(str(p) for p in err.path)
        problems.append(f"at {where or 'the top'}: {err.message[:200]}")
    if problems:
        mismatch = AnswerMismatch(f"the answer of tool {tool!r} does not match its outputSchema (check the "
                                  "endpoint's `return:` declaration): " + "; ".join(problems))
        log.warning("%s", mismatch)  # the author's to fix: FastMCP's own line does not say why
        raise mismatch


class SqlgateTool(Tool):
    """A tool whose body is an async handler returning a JSON object."""

    _handler: Handler = PrivateAttr()
    _validator: Draft202012Validator | None = PrivateAttr(default=None)
    _answer_validator: Draft202012Validator | None = PrivateAttr(default=None)

    @classmethod
    def create(cls, *, name: str, description: str, parameters: dict[str, Any], handler: Handler,
               output_schema: dict[str, Any] | None = None, title: str | None = None,
               annotations: dict[str, Any] | None = None, tags: set[str] | None = None,
               meta: dict[str, Any] | None = None, validate: bool = True) -> SqlgateTool:
        """`validate=False` when the handler validates itself (YAML endpoints apply defaults first)."""
        tool = cls(
            name=name, title=title, description=description, parameters=parameters,
            output_schema=output_schema,
            annotations=ToolAnnotations(**annotations) if annotations else None,
            tags=tags or set(), meta=meta,
        )
        tool._handler = handler
        tool._validator = Draft202012Validator(parameters) if validate else None
        return tool

    async def run(self, arguments: dict[str, Any]) -> ToolResult:
        try:
            if self._validator is not None:
                check_arguments(self._validator, arguments, f"tool {self.name!r}")
            out = await self._handler(arguments)
            if self._answer_validator is not None:
                check_answer(self._answer_validator, out, self.name)
        except SqlgateError as exc:
            note_error(exc)
            raise ToolError(error_text(exc), log_level=error_log_level(exc)) from None
        return answer_result(out)

    def check_answers(self) -> None:
        """Validate every answer against this tool's outputSchema (setting `check_answers`)."""
        if self.output_schema:
            self._answer_validator = Draft202012Validator(self.output_schema)


class SqlgateResource(Resource):
    _handler: Handler = PrivateAttr()

    async def read(self) -> str:
        try:
            return _resource_text(await self._handler({}), self.mime_type)
        except SqlgateError as exc:
            note_error(exc)
            raise ResourceError(error_text(exc), log_level=error_log_level(exc)) from None


class SqlgateResourceTemplate(ResourceTemplate):
    _handler: Handler = PrivateAttr()

    async def read(self, arguments: dict[str, Any]) -> str:
        try:
            return _resource_text(await self._handler(arguments), self.mime_type)
        except SqlgateError as exc:
            note_error(exc)
            raise ResourceError(error_text(exc), log_level=error_log_level(exc)) from None

    async def create_resource(self, uri: str, params: dict[str, Any]) -> Resource:
        template = self

        class _Bound(Resource):
            async def read(self) -> str:
                return await template.read(params)

        return _Bound(uri=uri, name=self.name, description=self.description, mime_type=self.mime_type)

    async def _read(self, uri: str, params: dict[str, Any]):
        return self.convert_result(await self.read(params))


def _resource_text(envelope: dict[str, Any], mime_type: str) -> str:
    note_answer(envelope)
    result = envelope.get("result")
    if isinstance(result, str) and not envelope.get("truncated") and "json" not in mime_type:
        return result
    return dumps(envelope)


class SqlgatePrompt(Prompt):
    _renderer: Callable[[dict[str, Any]], list[tuple[str, str]]] = PrivateAttr()

    async def render(self, arguments: dict[str, Any] | None = None) -> PromptResult:
        try:
            messages = self._renderer(arguments or {})
        except SqlgateError as exc:
            note_error(exc)
            raise PromptError(error_text(exc), log_level=error_log_level(exc)) from None
        return PromptResult([Message(text, role=role) for role, text in messages], description=self.description)


def prompt_arguments(parameters: list[Any]) -> list[PromptArgument]:
    return [PromptArgument(name=p.name, description=p.description, required=p.is_required) for p in parameters]
