"""
Packaging for mcpsvc: C{pip install .}, C{pip install -e .} (a PEP 660
editable install) and a wheel from C{python -m build} all give a working
C{twistd mcpsvc} and C{mcpsvc}.

The plugin file C{twisted/plugins/mcpsvc_plugin.py} is a module of the
namespace package C{twisted.plugins}: Twisted's own
C{twisted/plugins/__init__.py} adds every C{twisted/plugins} directory
found under a C{sys.path} entry to its C{__path__}. A wheel puts the file
into site-packages, which is on C{sys.path}. For an editable install,
C{package_dir={"": "."}} (every package lives directly under the
checkout) makes setuptools choose its static C{.pth} strategy: the
checkout itself goes on C{sys.path}, so Twisted finds
C{<checkout>/twisted/plugins} like any other plugin directory. Without it
setuptools chooses its import-hook ("finder") strategy, which puts no
directory on C{sys.path}, and twistd answers "Unknown command: mcpsvc".
C{mcpsvc} warns when it finds the plugin invisible (L{mcpsvc.install}).
"""

import os
import re

from setuptools import find_namespace_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read(*path):
    with open(os.path.join(HERE, *path), encoding="utf-8") as f:
        return f.read()


def version():
    """
    The version, from its one source, C{mcpsvc/_version.py} (read, not
    imported: the build environment need not have the dependencies).
    """
    namespace = {}
    exec(read("mcpsvc", "_version.py"), namespace)
    return namespace["__version__"]


#: The public repository (project URLs on an index page and in pip show).
#: Not yet published anywhere: confirm it before uploading to an index.
REPOSITORY = "https://github.com/mcpsvc/mcpsvc"


def longDescription():
    """
    The README, with its links to files of the repository made absolute,
    so that they work on an index page too.
    """
    return re.sub(
        r"\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)",
        lambda m: "](" + REPOSITORY + "/blob/main/" + m.group(1) + ")",
        read("README.md"),
    )

setup(
    name="mcpsvc",
    version=version(),
    description="MCP server with its own OAuth 2.1 authorization server, on Twisted",
    long_description=longDescription(),
    long_description_content_type="text/markdown",
    author="mcpsvc maintainers",
    license_expression="LicenseRef-Proprietary",
    url=REPOSITORY,
    project_urls={
        "Documentation": REPOSITORY + "/tree/main/docs",
        "Source": REPOSITORY,
        "Issues": REPOSITORY + "/issues",
    },
    keywords=["mcp", "model context protocol", "oauth", "twisted", "servicenow"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Environment :: No Input/Output (Daemon)",
        "Framework :: Twisted",
        "Intended Audience :: Developers",
        "Intended Audience :: System Administrators",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Topic :: Internet :: WWW/HTTP :: HTTP Servers",
        "Topic :: Security",
    ],
    python_requires=">=3.11",
    package_dir={"": "."},
    packages=find_namespace_packages(include=["mcpsvc", "mcpsvc.*", "twisted.plugins"]),
    package_data={"mcpsvc": ["py.typed", "web/*.html", "web/*.css"]},
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=24.8",
        "treq>=24.9",
        "pyjwt[crypto]>=2.10",
        "txredisapi>=1.4.10",
        # txredisapi parses replies with hiredis (Redis's C parser) when it
        # is installed; its pure-Python parser spends a reactor iteration
        # and two epoll_ctl calls on every element of a reply.
        "hiredis>=3.0",
        "python-dotenv>=1.0",
        "attrs>=23.1",
        "cryptography>=42",
        "jsonschema>=4.20",
        "prometheus-client>=0.20",
        "hyperlink>=21.0",
        "zope.interface>=6.0",
        # SKILL.md front matter (the skills extension).
        "pyyaml>=6.0",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "mcp>=1.20",
            "httpx",
            "selenium>=4.20",
            "hypothesis>=6.100",
        ],
    },
    entry_points={"console_scripts": ["mcpsvc = mcpsvc.cli:main"]},
)
