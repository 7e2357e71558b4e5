# -*- test-case-name: mcpsvc.tools.test.test_core -*-
"""
The C{core} tool pack: C{echo_message}, C{calculate}, C{get_timestamp}.

C{calculate} evaluates arithmetic by walking the C{ast} of the expression
(never C{eval}): numbers, C{+ - * / // % **}, parentheses, unary signs and
a few functions and constants. Expression length, node count, exponents and
the size of intermediate integers are bounded, so no input can make it run
long or use much memory.
"""

from __future__ import annotations

import ast
import math
import operator
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Mapping, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mcpsvc.tools.interfaces import Tool, ToolContext, ToolError, ToolPackContext

__all__ = ["coreTools", "evaluate", "CalculationError", "MAX_EXPRESSION_LENGTH"]

MAX_EXPRESSION_LENGTH = 1000
MAX_NODES = 200
MAX_EXPONENT = 10_000
#: Largest integer magnitude (in bits) any step may produce.
MAX_INT_BITS = 4096
MAX_ECHO = 10_000

Number = Union[int, float]

_TOO_LARGE_FOR_FLOAT = (
    "The result is too large for a floating-point number (at most about 1.8e308); "
    "use integers only (no decimal point or /) to work with larger numbers"
)


class CalculationError(ToolError):
    """
    The expression is not allowed or cannot be evaluated.
    """


def _checkInt(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculationError("The result is too large")
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        raise CalculationError("The result is not a finite number")
    return value


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculationError(f"Exponents are limited to {MAX_EXPONENT}")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if (base.bit_length() - 1) * exponent > MAX_INT_BITS:
            raise CalculationError("The result is too large")
    try:
        result = base**exponent
    except OverflowError:
        raise CalculationError("The result is too large") from None
    except ZeroDivisionError:
        raise CalculationError("Division by zero") from None
    if isinstance(result, complex):
        raise CalculationError("The result is not a real number")
    return result


def _divide(f: Callable[[Number, Number], Number]) -> Callable[[Number, Number], Number]:
    def divide(a: Number, b: Number) -> Number:
        try:
            return f(a, b)
        except ZeroDivisionError:
            raise CalculationError("Division by zero") from None

    return divide


def _multiply(a: Number, b: Number) -> Number:
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        raise CalculationError("The result is too large")
    return a * b


_BINARY: Dict[type, Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: _multiply,
    ast.Div: _divide(operator.truediv),
    ast.FloorDiv: _divide(operator.floordiv),
    ast.Mod: _divide(operator.mod),
    ast.Pow: _power,
}
_UNARY: Dict[type, Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise CalculationError("sqrt of a negative number")
    return math.sqrt(x)


def _log(x: Number, base: Number = math.e) -> Number:
    if x <= 0 or base <= 0 or base == 1:
        raise CalculationError("log is defined for positive numbers and bases other than 1")
    return math.log(x, base)


def _round(x: Number, digits: int = 0) -> Number:
    if not isinstance(digits, int) or abs(digits) > 20:
        raise CalculationError("round() takes at most 20 digits")
    return round(x, digits)


_FUNCTIONS: Dict[str, Callable[..., Number]] = {
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "sqrt": _sqrt,
    "floor": math.floor,
    "ceil": math.ceil,
    "log": _log,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
}
_CONSTANTS: Dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def evaluate(expression: str) -> Number:
    """
    Evaluate an arithmetic expression safely.

    @raise CalculationError: the expression is invalid, not allowed, too
        large, or fails (division by zero, overflow).
    """
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise CalculationError(f"Expressions are limited to {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError):
        raise CalculationError("The expression is not valid arithmetic") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculationError("The expression is too complex")

    def visit(node: ast.AST) -> Number:
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CalculationError("Only numbers are allowed")
            return _checkInt(value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _checkInt(_BINARY[type(node.op)](visit(node.left), visit(node.right)))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](visit(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
            and 0 < len(node.args) <= 10
        ):
            args = [visit(a) for a in node.args]
            try:
                return _checkInt(_FUNCTIONS[node.func.id](*args))
            except CalculationError:
                raise
            except OverflowError:
                raise CalculationError(_TOO_LARGE_FOR_FLOAT) from None
            except (TypeError, ValueError):
                raise CalculationError(f"Invalid arguments to {node.func.id}()") from None
        raise CalculationError("The expression uses something other than arithmetic")

    try:
        return visit(tree)
    except RecursionError:
        raise CalculationError("The expression is too deeply nested") from None
    except OverflowError:
        # Mixing a large integer with a float (2**4000 * 1.5), or dividing
        # one whose quotient no float can hold.
        raise CalculationError(_TOO_LARGE_FOR_FLOAT) from None


def _echo(arguments: Mapping[str, Any], context: ToolContext) -> str:
    return str(arguments["message"])


def _calculate(arguments: Mapping[str, Any], context: ToolContext) -> Dict[str, Any]:
    expression = arguments["expression"]
    result = evaluate(expression)
    if isinstance(result, float) and result.is_integer() and abs(result) < 2**53:
        text = repr(result)
    else:
        text = str(result)
    return {"expression": expression, "result": result, "text": text}


def _timestamp(arguments: Mapping[str, Any], context: ToolContext) -> Dict[str, Any]:
    name = arguments.get("timezone", "UTC")
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError(f"Unknown time zone: {name!r} (use an IANA name such as Europe/Paris)") from None
    now = context.clock.seconds()
    local = datetime.fromtimestamp(now, tz=timezone.utc).astimezone(zone)
    offset = local.utcoffset()
    offsetSeconds = int(offset.total_seconds()) if offset is not None else 0
    return {
        "iso": local.isoformat(),
        "unix": now,
        "timezone": name,
        "utcOffsetSeconds": offsetSeconds,
        "abbreviation": local.tzname() or "",
    }


def coreTools(context: ToolPackContext) -> List[Tool]:
    """
    Return the C{core} pack's tools.
    """
    return [
        Tool(
            name="echo_message",
            title="Echo",
            description="Return the given message unchanged (a connectivity check).",
            inputSchema={
                "type": "object",
                "properties": {
                    "message": {
                        "type": "string",
                        "maxLength": MAX_ECHO,
                        "description": "The text to echo back.",
                    }
                },
                "required": ["message"],
                "additionalProperties": False,
            },
            annotations={"readOnlyHint": True, "openWorldHint": False, "idempotentHint": True},
            call=_echo,
        ),
        Tool(
            name="calculate",
            title="Calculator",
            description=(
                "Evaluate an arithmetic expression: numbers, + - * / // % **, parentheses, "
                "abs round min max sqrt floor ceil log sin cos tan, pi e tau."
            ),
            inputSchema={
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_EXPRESSION_LENGTH,
                        "description": "For example: (2 + 3) * 4 ** 2",
                    }
                },
                "required": ["expression"],
                "additionalProperties": False,
            },
            outputSchema={
                "type": "object",
                "properties": {
                    "expression": {"type": "string"},
                    "result": {"type": "number"},
                    "text": {"type": "string"},
                },
                "required": ["expression", "result", "text"],
            },
            annotations={"readOnlyHint": True, "openWorldHint": False, "idempotentHint": True},
            call=_calculate,
        ),
        Tool(
            name="get_timestamp",
            title="Current time",
            description="Return the current date and time in an IANA time zone (default UTC).",
            inputSchema={
                "type": "object",
                "properties": {
                    "timezone": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 64,
                        "default": "UTC",
                        "description": "IANA time zone name, e.g. Europe/Paris or America/New_York.",
                    }
                },
                "additionalProperties": False,
            },
            outputSchema={
                "type": "object",
                "properties": {
                    "iso": {"type": "string"},
                    "unix": {"type": "number"},
                    "timezone": {"type": "string"},
                    "utcOffsetSeconds": {"type": "integer"},
                    "abbreviation": {"type": "string"},
                },
                "required": ["iso", "unix", "timezone", "utcOffsetSeconds"],
            },
            annotations={"readOnlyHint": True, "openWorldHint": False},
            call=_timestamp,
        ),
    ]
