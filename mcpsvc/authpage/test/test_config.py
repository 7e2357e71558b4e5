"""
The authorization page's settings in L{mcpsvc.config.loadConfig}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mcpsvc.config import ConfigError, loadConfig

BASE = {"JWT_SECRET": "c" * 40}


class PageConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = loadConfig(BASE)
        self.assertEqual(
            (config.authorizePageTitle, config.authorizePageText, config.loginUsersFile,
             config.loginSessionSeconds, config.rememberApprovals),
            ("mcpsvc", None, "./var/users.json", 1800, False),
        )

    def test_values(self) -> None:
        config = loadConfig(dict(BASE, AUTHORIZE_PAGE_TITLE="Acme", AUTHORIZE_PAGE_TEXT="Hello",
                                 LOGIN_USERS_FILE="/etc/mcpsvc/users.json",
                                 LOGIN_SESSION_SECONDS="600", REMEMBER_APPROVALS="on"))
        self.assertEqual(
            (config.authorizePageTitle, config.authorizePageText, config.loginUsersFile,
             config.loginSessionSeconds, config.rememberApprovals),
            ("Acme", "Hello", "/etc/mcpsvc/users.json", 600, True),
        )

    def test_errors(self) -> None:
        with self.assertRaises(ConfigError) as cm:
            loadConfig(dict(BASE, AUTHORIZE_PAGE_TITLE="x" * 81, AUTHORIZE_PAGE_TEXT="y" * 1001,
                            LOGIN_SESSION_SECONDS="10", REMEMBER_APPROVALS="maybe"))
        errors = "\n".join(cm.exception.errors)
        for name in ("AUTHORIZE_PAGE_TITLE", "AUTHORIZE_PAGE_TEXT", "LOGIN_SESSION_SECONDS",
                     "REMEMBER_APPROVALS"):
            self.assertIn(name, errors)
