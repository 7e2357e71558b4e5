"""
Fixtures for the authorization page tests: an L{OAuthApp} built with our
approver over a L{MemoryStore} and a L{Clock}, and a small form parser.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlencode

from twisted.internet.defer import maybeDeferred
from treq.testing import StubTreq

from mcpsvc.authpage import buildApprover
from mcpsvc.config import Config
from mcpsvc.oauth import buildOAuth
from mcpsvc.oauth.test.helpers import OAuthTestCase, queryOf

__all__ = ["PageTestCase", "Forms", "syncThread"]


def syncThread(f: Any, *a: Any, **kw: Any) -> Any:
    """
    A C{runInThread} for tests: runs C{f} at once.
    """
    return maybeDeferred(f, *a, **kw)


class Forms(HTMLParser):
    """
    Collects each form's fields (hidden inputs, text inputs, and the
    buttons' names and values) by form id, plus the page's text.
    """

    def __init__(self, body: bytes) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: Dict[str, Dict[str, str]] = {}
        self.buttons: Dict[str, List[Tuple[str, str]]] = {}
        self.order: List[str] = []
        self.text: List[str] = []
        self._current: Optional[str] = None
        self._count = 0
        self._inStyle = False
        self.feed(body.decode("utf-8"))

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._count += 1
            self._current = a.get("id") or f"form{self._count}"
            self.forms[self._current] = {}
            self.buttons[self._current] = []
        elif tag == "input" and self._current is not None and a.get("name"):
            self.forms[self._current][a["name"]] = a.get("value", "")
        elif tag == "button" and self._current is not None:
            self.buttons[self._current].append((a.get("name", ""), a.get("value", "")))
        if a.get("id"):
            self.order.append(a["id"])
        if tag == "style":
            self._inStyle = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._inStyle = False
        if tag == "form":
            self._current = None

    def handle_data(self, data: str) -> None:
        if not self._inStyle:
            self.text.append(data)

    @property
    def allText(self) -> str:
        return " ".join(" ".join(self.text).split())


class PageTestCase(OAuthTestCase):
    """
    An L{OAuthTestCase} whose app uses L{buildApprover}, with a cookie jar.
    """

    mode = "consent"

    def setUp(self) -> None:
        self.cookies: Dict[str, str] = {}
        super().setUp()

    def configure(self, config: Config) -> None:
        if config.authorizeMode == "auto":
            config = config.replace(authorizeMode=self.mode)
        self.config = config
        self.approver = buildApprover(config, store=self.store, clock=self.clock,
                                      runInThread=syncThread)
        self.oauth, self.bearer = buildOAuth(config, store=self.store, clock=self.clock,
                                             approver=self.approver, **self.oauthOptions(config))
        self.stub = StubTreq(self.oauth.resource())

    def browse(self, method: str, path: str, *, data: Optional[Dict[str, str]] = None,
               params: Optional[Dict[str, str]] = None, cookies: bool = True,
               site: Optional[str] = None) -> Tuple[Any, Any]:
        """
        A browser-like request: sends the jar's cookies, stores new ones.
        """
        headers = {"Accept": "text/html"}
        if site is not None:
            headers["Sec-Fetch-Site"] = site
        if cookies and self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        kw: Dict[str, Any] = {"headers": headers}
        if data is not None:
            kw["data"] = data
        if params is not None:
            kw["params"] = params
        # A fresh StubTreq each time: treq keeps its own cookie jar, and
        # this one must be the only one.
        self.stub = StubTreq(self.oauth.resource())
        response, body = self.request(method, path, **kw)
        for raw in response.headers.getRawHeaders("set-cookie") or []:
            name, _, rest = raw.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in raw.lower() or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response, body

    def showPage(self, client: Dict[str, Any], **changes: Optional[str]) -> Tuple[Any, Forms]:
        response, body = self.browse("GET", "/oauth/authorize",
                                     params=self.authorizeParams(client, **changes))
        self.assertIsInstance(body, bytes, repr(body))
        return response, Forms(body)

    def submit(self, fields: Dict[str, str], decision: str, site: Optional[str] = "same-origin",
               **extra: str) -> Tuple[Any, Any]:
        return self.browse("POST", "/oauth/authorize",
                           data=dict(fields, decision=decision, **extra), site=site)

    def redirectQuery(self, response: Any) -> Dict[str, str]:
        self.assertEqual(response.code, 302)
        return queryOf(self.header(response, "location") or "")

    def query(self, **params: str) -> str:
        return urlencode(params)
