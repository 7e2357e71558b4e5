"""
Packaging for mcpsvc. Install with
C{pip install -e '.[test]' --config-settings editable_mode=compat}
(the compat editable mode exposes C{twisted/plugins} to twistd).
"""

from setuptools import find_namespace_packages, setup

setup(
    name="mcpsvc",
    version="0.1.0",
    description="MCP server with its own OAuth 2.1 authorization server, on Twisted",
    python_requires=">=3.11",
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
