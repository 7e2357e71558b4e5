# -*- test-case-name: mcpsvc.tools.test.test_build -*-
"""
The plugin package of mcpsvc's tool packs.

Every module in this package (and in any C{mcpsvc/plugins} directory found
on C{sys.path}, see L{twisted.plugin.pluginPackagePaths}) that exposes an
object providing L{mcpsvc.tools.interfaces.IToolProvider} at module level
adds a tool pack: drop a module in, list its C{packName} in C{TOOL_PACKS},
restart. No change to mcpsvc itself.

Keep plugin modules light: they are imported during discovery.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # type: ignore[name-defined]
__all__: list = []
