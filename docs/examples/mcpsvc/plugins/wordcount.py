"""
A worked example of an mcpsvc tool pack: the C{textstats} pack, with two
tools, C{word_count} and C{count_word}. See docs/tool-plugins.md.

Install it by putting this file in a C{mcpsvc/plugins} directory (one
I{without} an C{__init__.py}) under any directory on C{sys.path}, e.g.::

    mkdir -p /opt/mcpsvc-tools/mcpsvc/plugins
    cp wordcount.py /opt/mcpsvc-tools/mcpsvc/plugins/
    PYTHONPATH=/opt/mcpsvc-tools TOOL_PACKS=core,textstats twistd -n mcpsvc

It uses no network and nothing outside the standard library, Twisted and
mcpsvc. It shows:

  - the plugin object: a module-level object providing C{IPlugin} and
    C{IToolProvider}, with a C{packName};
  - the input schema (JSON Schema 2020-12), checked by mcpsvc before the
    tool runs, and an output schema, so the result is returned as
    C{structuredContent} plus a text block;
  - an C{async} call that does CPU work off the reactor thread, in bounded
    chunks (C{runInThread}), so a timeout or a C{notifications/cancelled}
    stops it between chunks;
  - progress notifications (C{context.progress});
  - an expected failure (L{ToolError}) that the client sees as an
    C{isError} result;
  - a per-tool timeout;
  - asking the user for input (C{context.clientRequest}, in C{count_word}),
    written once for every protocol era.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import partial
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

from twisted.plugin import IPlugin
from zope.interface import implementer

from mcpsvc.tools.interfaces import (
    IToolProvider,
    Tool,
    ToolContext,
    ToolError,
    ToolPackContext,
)

#: Longest text accepted (characters); enforced by the input schema.
MAX_TEXT = 200_000
#: Lines counted per chunk: the unit of progress and of cancellation.
CHUNK_LINES = 500

_WORD = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")


def countChunk(lines: Sequence[str]) -> Tuple[int, Counter]:
    """
    Count the words of some lines. Pure and blocking: it runs in a thread.
    """
    counts: Counter = Counter()
    words = 0
    for line in lines:
        found = [word.lower() for word in _WORD.findall(line)]
        words += len(found)
        counts.update(found)
    return words, counts


async def wordCount(
    runInThread: Callable[..., Any], arguments: Mapping[str, Any], context: ToolContext
) -> Dict[str, Any]:
    """
    The C{word_count} tool. C{arguments} have already been validated
    against the input schema, so C{text} is a string of at most
    L{MAX_TEXT} characters and C{top}, when present, is 1 to 50.
    """
    text: str = arguments["text"]
    top: int = arguments.get("top", 5)
    lines = text.splitlines()
    total = max(1, len(lines))
    words = 0
    counts: Counter = Counter()
    for start in range(0, len(lines), CHUNK_LINES):
        # Each chunk runs in a thread; awaiting it is where a timeout or a
        # client's cancellation lands (the await raises CancelledError and
        # no further chunk starts).
        chunkWords, chunkCounts = await runInThread(
            countChunk, lines[start : start + CHUNK_LINES]
        )
        words += chunkWords
        counts.update(chunkCounts)
        done = min(start + CHUNK_LINES, len(lines))
        # Sent as notifications/progress only when the client asked for
        # progress (a progressToken) and accepts SSE; otherwise a no-op.
        context.progress(done, total, f"{done} of {total} lines")
    if words == 0:
        # An expected failure: the client gets {"isError": true} with this
        # text, and no traceback is logged.
        raise ToolError("The text contains no words")
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
    return {
        "words": words,
        "distinctWords": len(counts),
        "characters": len(text),
        "lines": len(lines),
        "top": [{"word": word, "count": count} for word, count in ranked],
    }


async def countWord(
    runInThread: Callable[..., Any], arguments: Mapping[str, Any], context: ToolContext
) -> str:
    """
    The C{count_word} tool: asks the user which word to count, then counts
    it in C{text}.

    C{context.clientRequest} works in every era: before 2026-07-28 the
    question goes to the client on the call's SSE stream and the answer
    comes back on a POST; in 2026-07-28 the call ends with C{input_required}
    and, when the client retries with the answer, runs again from the
    start, and the same C{clientRequest} returns the answer at once. So do
    nothing before a question that cannot be repeated.
    """
    answer = await context.clientRequest(
        "elicitation/create",
        {
            "message": "Which word should I count?",
            "requestedSchema": {
                "type": "object",
                "properties": {"word": {"type": "string", "minLength": 1}},
                "required": ["word"],
            },
        },
        key="word",
    )
    if answer.get("action") != "accept":
        raise ToolError("No word to count: the question was declined")
    word = str((answer.get("content") or {}).get("word", "")).strip().lower()
    if not word:
        raise ToolError("No word to count")
    _, counts = await runInThread(countChunk, arguments["text"].splitlines())
    times = counts[word]
    return f"{word!r} appears {times} time{'' if times == 1 else 's'}."


@implementer(IPlugin, IToolProvider)
class TextStatsPack:
    """
    The C{textstats} tool pack. Enabled by listing C{textstats} in
    C{TOOL_PACKS}.
    """

    packName = "textstats"

    def tools(self, context: ToolPackContext) -> List[Tool]:
        # Called once, when the registry is built: no I/O here. Take what
        # the calls need from the pack context (configuration, clock,
        # runInThread, httpClient).
        return [
            Tool(
                name="word_count",
                title="Word count",
                description=(
                    "Count the words, distinct words, characters and lines of a text, "
                    "and list its most frequent words."
                ),
                inputSchema={
                    "type": "object",
                    "properties": {
                        "text": {
                            "type": "string",
                            "maxLength": MAX_TEXT,
                            "description": "The text to analyse.",
                        },
                        "top": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 50,
                            "default": 5,
                            "description": "How many of the most frequent words to list.",
                        },
                    },
                    "required": ["text"],
                    "additionalProperties": False,
                },
                outputSchema={
                    "type": "object",
                    "properties": {
                        "words": {"type": "integer"},
                        "distinctWords": {"type": "integer"},
                        "characters": {"type": "integer"},
                        "lines": {"type": "integer"},
                        "top": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "word": {"type": "string"},
                                    "count": {"type": "integer"},
                                },
                                "required": ["word", "count"],
                            },
                        },
                    },
                    "required": ["words", "distinctWords", "characters", "lines", "top"],
                },
                annotations={"readOnlyHint": True, "openWorldHint": False, "idempotentHint": True},
                timeout=10.0,
                call=partial(wordCount, context.runInThread),
            ),
            Tool(
                name="count_word",
                title="Count a word",
                description="Ask the user for a word, and count it in a text.",
                inputSchema={
                    "type": "object",
                    "properties": {
                        "text": {
                            "type": "string",
                            "maxLength": MAX_TEXT,
                            "description": "The text to search.",
                        },
                    },
                    "required": ["text"],
                    "additionalProperties": False,
                },
                # A client that cannot show a form is told so up front.
                requiredClientCapabilities={"elicitation": {}},
                timeout=10.0,
                call=partial(countWord, context.runInThread),
            ),
        ]


#: The plugin object twisted.plugin finds.
textstats = TextStatsPack()
