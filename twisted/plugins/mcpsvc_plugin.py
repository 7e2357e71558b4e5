"""
The C{twistd mcpsvc} plugin. Inert on purpose: it names the module that
builds the service and imports nothing else, so plugin discovery (every
C{twistd --help}) installs no reactor and loads neither Klein nor txredisapi.
"""

from twisted.application.service import ServiceMaker

mcpsvc = ServiceMaker(
    "mcpsvc",
    "mcpsvc.tap",
    "MCP server (Streamable HTTP) with its own OAuth 2.1 authorization server.",
    "mcpsvc",
)
