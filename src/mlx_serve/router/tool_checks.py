"""Checks of the tool-calling and structured-output fields of a chat request.

They are forwarded to the worker intact, but a malformed one is the client's mistake and must
be a 400 naming the field: ``mlx_lm server`` would otherwise fail on it deep inside (an
assistant turn whose ``arguments`` are not JSON makes its ``json.loads`` raise) or, for
``tool_choice`` and ``response_format``, which mlx-lm 0.32 does not read at all, silently do
something else than asked. What mlx-lm does with each field is in the README ("Tools and
structured output").
"""

from __future__ import annotations

import json
from typing import Any

from mlx_serve.errors import ApiError

TOOL_CHOICES = ("none", "auto", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


def check_tool_fields(body: dict[str, Any]) -> None:
    """400 for a malformed ``tools``, ``tool_choice``, ``response_format`` or tool call."""
    if "tools" in body and body["tools"] is not None:
        _check_tools(body["tools"])
    if "tool_choice" in body and body["tool_choice"] is not None:
        _check_tool_choice(body["tool_choice"])
    if "response_format" in body and body["response_format"] is not None:
        _check_response_format(body["response_format"])
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("tool_calls") is not None:
            _check_tool_calls(message["tool_calls"])


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_request")


def _check_tools(tools: object) -> None:
    if not isinstance(tools, list):
        raise _bad("tools", "'tools' must be a list of function tools")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise _bad("tools", f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad("tools", f"tools[{i}].function must be an object with a 'name'")
        if not function["name"]:
            raise _bad("tools", f"tools[{i}].function.name must not be empty")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise _bad("tools", f"tools[{i}].function.parameters must be a JSON schema object")


def _check_tool_choice(choice: object) -> None:
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise _bad(
                "tool_choice",
                f"'tool_choice' must be one of {', '.join(TOOL_CHOICES)} or "
                "{'type': 'function', 'function': {'name': ...}}",
            )
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise _bad("tool_choice", "'tool_choice' names a function as {'function': {'name': ...}}")


def _check_response_format(value: object) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in RESPONSE_FORMATS:
        raise _bad(
            "response_format",
            f"'response_format.type' must be one of {', '.join(RESPONSE_FORMATS)}",
        )
    assert isinstance(value, dict)
    if kind == "json_schema":
        schema = value.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise _bad(
                "response_format",
                "'response_format.json_schema' must be an object with a 'name' and a 'schema'",
            )
        if "schema" in schema and not isinstance(schema["schema"], dict):
            raise _bad("response_format", "'response_format.json_schema.schema' must be an object")


def _check_tool_calls(calls: object) -> None:
    if not isinstance(calls, list):
        raise _bad("messages", "an assistant message's 'tool_calls' must be a list")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad("messages", "each tool call needs 'function': {'name', 'arguments'}")
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            try:
                parsed = json.loads(arguments)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise _bad(
                    "messages",
                    f"tool call {function['name']!r}: 'arguments' must be a JSON object "
                    "encoded as a string",
                )
        elif arguments is not None and not isinstance(arguments, dict | str):
            raise _bad("messages", f"tool call {function['name']!r}: bad 'arguments'")
