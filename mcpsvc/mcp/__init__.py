# -*- test-case-name: mcpsvc.mcp.test -*-
"""
The MCP endpoint: L{mcpsvc.mcp.protocol} (JSON-RPC and MCP messages, sans
I/O), L{mcpsvc.mcp.dispatcher} (what the methods mean) and
L{mcpsvc.mcp.app} (Streamable HTTP on C{/mcp}).
"""

__all__: list = []
