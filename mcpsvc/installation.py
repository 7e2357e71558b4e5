# -*- test-case-name: mcpsvc.test.test_installation -*-
"""
Whether this installation of mcpsvc is usable as C{twistd mcpsvc}.

twistd finds the C{mcpsvc} command through Twisted's plugin system: it
lists the modules of every directory on C{twisted.plugins.__path__}, which
Twisted builds from the C{twisted/plugins} directories under the entries
of C{sys.path}. A wheel (C{pip install .}, C{python -m build}) installs
C{twisted/plugins/mcpsvc_plugin.py} into site-packages, and an editable
install (C{pip install -e .}) puts the checkout on C{sys.path} (see
C{setup.py}); both work. What does not: an editable install made before
that (setuptools' import-hook strategy puts no directory on C{sys.path}),
a repackaging that dropped the plugin file (C{find_packages()} skips the
C{twisted/plugins} namespace package), or a zipped application. The
C{mcpsvc} command then says so, with the fix (L{pluginProblem}).
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

__all__ = ["PLUGIN_MODULE", "pluginDirectories", "pluginProblem", "versionText"]

#: The file twistd must find on C{twisted.plugins.__path__}.
PLUGIN_MODULE = "mcpsvc_plugin.py"


def pluginDirectories() -> list[str]:
    """
    The directories twistd searches for plugins, as it will see them.
    """
    import twisted.plugins

    return list(twisted.plugins.__path__)


def pluginProblem(directories: Optional[Iterable[str]] = None) -> Optional[str]:
    """
    C{None} when twistd can find the C{mcpsvc} plugin in C{directories}
    (default: L{pluginDirectories}); otherwise what is wrong and how to
    fix it, for a person to read.
    """
    searched = list(pluginDirectories() if directories is None else directories)
    for directory in searched:
        if os.path.isfile(os.path.join(directory, PLUGIN_MODULE)):
            return None
    return (
        "twistd cannot find the mcpsvc plugin: no twisted/plugins/" + PLUGIN_MODULE
        + " in any of " + ", ".join(searched or ["(no plugin directories)"])
        + ", so `twistd mcpsvc` answers \"Unknown command: mcpsvc\".\n"
        "Fix: reinstall mcpsvc with pip, from the wheel or the checkout: `pip install .` "
        "(or `pip install -e .` for development, with setuptools 77 or later). An editable "
        "install made by an older mcpsvc checkout must be redone the same way. A package "
        "must include twisted/plugins/" + PLUGIN_MODULE + " (it is a module of the "
        "namespace package twisted.plugins, which find_packages() skips)."
    )


def versionText() -> str:
    """
    What C{mcpsvc --version} and C{twistd mcpsvc --version} print: mcpsvc's
    version (L{mcpsvc.__version__}, the one the package metadata and
    C{/health} carry), then Twisted's and Python's.
    """
    import platform

    from twisted import version as twistedVersion

    from mcpsvc import __version__

    return (
        f"mcpsvc {__version__} (Twisted {twistedVersion.short()}, "
        f"Python {platform.python_version()})"
    )
