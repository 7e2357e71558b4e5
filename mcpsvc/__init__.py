"""
mcpsvc: a Model Context Protocol server with its own OAuth 2.1 authorization
server, built on Twisted.
"""

from mcpsvc._version import __version__

__all__ = ["__version__"]
