# -*- test-case-name: mcpsvc.test.test_config -*-
"""
Configuration: environment variables and C{.env}, overridden by command-line
options, validated all at once into a frozen L{Config}.

Precedence, highest first: C{twistd mcpsvc} options > process environment >
C{.env} file > defaults. Validation collects every error and raises one
L{ConfigError} listing them all, before anything listens.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import attrs
from attrs import field, frozen
from twisted.python.filepath import FilePath

__all__ = [
    "Config",
    "ConfigError",
    "loadConfig",
    "readEnvironment",
    "ensureDevelopmentSecrets",
    "VARIABLES",
    "summary",
    "SECRET_VARIABLES",
    "SERVICENOW_ANY_INSTANCE_PATTERN",
]

STORES = ("sqlite", "redis", "memory")
ENVIRONMENTS = ("development", "production")
DEPLOYMENT_TYPES = ("single-server", "multi-server")
AUTH_MODES = ("oauth", "none")
AUTHORIZE_MODES = ("consent", "login", "auto")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS = ("text", "json")
#: Loopback only: a ServiceNow instance is added by C{SERVICENOW_INSTANCE}
#: (pinned to that instance) or, as an explicit opt-in, by
#: C{SERVICENOW_ANY_INSTANCE=on} (L{SERVICENOW_ANY_INSTANCE_PATTERN}).
DEFAULT_REDIRECT_PATTERNS = (
    "http://localhost/*",
    "http://127.0.0.1/*",
    "http://[::1]/*",
)
#: Every ServiceNow tenant's redirect URI, including free developer
#: instances anyone can get: only with C{SERVICENOW_ANY_INSTANCE=on}.
SERVICENOW_ANY_INSTANCE_PATTERN = "https://*.service-now.com/oauth_redirect.do"
#: Host suffixes shared by every ServiceNow tenant: a DCR_REDIRECT_PATTERNS
#: entry with a wildcard host under one of them opens registration to every
#: tenant, as L{SERVICENOW_ANY_INSTANCE_PATTERN} does.
_SERVICENOW_SHARED_DOMAINS = (".service-now.com", ".servicenowservices.com")

#: A CIMD_ALLOWED_HOSTS or CIMD_DENIED_HOSTS entry: a host name, or
#: C{*.} and a domain.
_HOST_ENTRY = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")

#: Every variable we read, with its default (C{None}: unset) and a comment;
#: C{.env.example} is checked against this table by the tests.
VARIABLES: Dict[str, Tuple[Optional[str], str]] = {
    "ENVIRONMENT": ("development", "development or production (NODE_ENV is an alias)"),
    "HOST": ("127.0.0.1", "interface the default listener binds"),
    "PORT": ("3000", "port of the default listener"),
    "SERVER_URL": (None, "public base URL, no trailing slash; default http://HOST:PORT in development"),
    "JWT_SECRET": (None, "HS256 signing secret, 32+ bytes; generated into var/ in development"),
    "JWT_ISSUER": (None, "token issuer; defaults to SERVER_URL"),
    "JWT_PRIVATE_KEY_FILE": (None, "PEM EC P-256 or RSA private key: sign ES256/RS256 and publish JWKS"),
    "JWT_KEYS_DIR": (None, "directory of PEM keys for rotation (mcpsvc keys rotate)"),
    "JWT_KEY_PUBLISH_DELAY": ("600", "seconds a rotated key is published in the JWKS before it signs"),
    "DCR_AUTH_TOKEN": (None, "initial access token guarding /oauth/register, 32+ chars"),
    "DCR_OPEN": ("false", "allow registration without DCR_AUTH_TOKEN"),
    "DCR_REDIRECT_PATTERNS": (",".join(DEFAULT_REDIRECT_PATTERNS), "comma list of redirect URI patterns allowed at registration ('*' wildcards)"),
    "PRIVATE_KEY_JWT": ("on", "on: clients may authenticate with private_key_jwt (RFC 7523) at the token, revocation and introspection endpoints"),
    "CLIENT_ASSERTION_MAX_LIFETIME": ("300", "seconds: a client assertion whose exp is further ahead is refused"),
    "CLIENT_JWKS_CACHE_SECONDS": ("300", "seconds a client's jwks_uri key set is cached"),
    "CIMD": ("on", "on: an https URL client_id names its Client ID Metadata Document, fetched and used without registration; off: registered clients only"),
    "CIMD_ALLOWED_HOSTS": ("", "comma list of hosts (or *.domain) whose metadata documents are accepted; empty: any public host"),
    "CIMD_DENIED_HOSTS": ("", "comma list of hosts (or *.domain) whose metadata documents are refused"),
    "CIMD_CACHE_MIN_SECONDS": ("60", "shortest time a fetched metadata document is used before it is fetched again"),
    "CIMD_CACHE_MAX_SECONDS": ("86400", "longest time a fetched metadata document is used before it is fetched again"),
    "CIMD_STALE_IF_ERROR": ("3600", "seconds a stale metadata document is still used while its host fails; 0: never"),
    "CIMD_IDLE_RETENTION": ("2592000", "seconds a metadata document client's stored copy is kept unused (and with no live grant) before the sweeper removes it; 0: kept forever"),
    "CIMD_FETCH_TIMEOUT": ("5", "seconds a metadata document fetch may take"),
    "MCP_API_KEY": (None, "static key accepted on /mcp (Bearer or X-API-Key); off when unset"),
    "ACCESS_TOKEN_LIFETIME": ("3600", "access token lifetime, seconds"),
    "REFRESH_TOKEN_LIFETIME": ("7776000", "refresh token lifetime, seconds (90 days)"),
    "AUTHORIZATION_CODE_LIFETIME": ("600", "authorization code lifetime, seconds"),
    "REFRESH_GRACE_SECONDS": ("60", "how long a superseded refresh token still works"),
    "REFRESH_GRACE_REPLAYS": ("3", "how many times a superseded refresh token works within the grace window"),
    "SERVICENOW_INSTANCE": (None, "https URL of the ServiceNow instance (CORS origin, the one redirect host registration accepts)"),
    "SERVICENOW_ANY_INSTANCE": (None, "on: registration accepts every *.service-now.com instance; unset: on only in development without SERVICENOW_INSTANCE"),
    "CORS_ORIGINS": ("", "comma list of extra allowed CORS origins"),
    "STORE": ("sqlite", "sqlite, redis or memory"),
    "STORE_PATH": ("./var/mcpsvc.sqlite3", "SQLite database file"),
    "STORE_TIMEOUT": ("5", "seconds before a store call fails as unavailable"),
    "REDIS_URL": (None, "redis:// or rediss:// URL (password, db)"),
    "REDIS_HOST": ("127.0.0.1", "Redis host when REDIS_URL is unset"),
    "REDIS_PORT": ("6379", "Redis port when REDIS_URL is unset"),
    "REDIS_PASSWORD": (None, "Redis password when REDIS_URL is unset"),
    "REDIS_DB": ("0", "Redis database number"),
    "REDIS_PREFIX": ("mcpsvc:", "prefix of every Redis key"),
    "REDIS_SENTINELS": (None, "comma list of host:port Sentinels"),
    "REDIS_SENTINEL_MASTER": (None, "Sentinel master name"),
    "DEPLOYMENT_TYPE": ("single-server", "single-server or multi-server (requires redis)"),
    "TRUSTED_PROXIES": ("", "comma list of proxy addresses/networks whose X-Forwarded-* we honour"),
    "ALLOWED_HOSTS": ("", "comma list of extra Host values accepted on /mcp"),
    "LOG_LEVEL": ("info", "debug, info, warn, error or critical"),
    "LOG_FORMAT": ("text", "text or json (one JSON object per line on stdout)"),
    "SHUTDOWN_TIMEOUT": ("10", "seconds to drain in-flight requests on SIGTERM"),
    "SWEEP_INTERVAL": ("60", "seconds between sweeps of expired records"),
    "AUTH_MODE": ("oauth", "oauth or none (none refused in production)"),
    "AUTHORIZE_MODE": ("consent", "consent, login or auto"),
    "AUTHORIZE_PAGE_TITLE": ("mcpsvc", "operator name shown as the title of the authorization page"),
    "AUTHORIZE_PAGE_TEXT": (None, "a short operator text shown on the authorization page"),
    "LOGIN_USERS_FILE": ("./var/users.json", "AUTHORIZE_MODE=login: accounts file (mcpsvc users add)"),
    "LOGIN_SESSION_SECONDS": ("1800", "AUTHORIZE_MODE=login: how long a sign-in lasts, seconds"),
    "REMEMBER_APPROVALS": ("off", "on: skip the page for a client the person approved before (mcpsvc grants)"),
    "SESSIONS": ("on", "on: issue Mcp-Session-Id; off: stateless"),
    "SESSION_IDLE_TIMEOUT": ("3600", "seconds an idle MCP session lives"),
    "SESSION_LIMIT": ("100", "live MCP sessions per user and client; a new one ends the least recently used"),
    "STREAM_LIMIT": ("10", "open GET streams, and subscriptions/listen streams, per user and client, per instance; more are refused (429)"),
    "STREAM_LIMIT_TOTAL": ("1000", "open GET and subscriptions/listen streams on an instance, whoever opens them; more are refused (429)"),
    "RATE_LIMIT_INITIALIZE": ("120/60", "MCP initialize requests per user and client: count/seconds"),
    "TOOL_PACKS": ("core", "comma list of enabled tool packs"),
    "TOOL_TIMEOUT": ("30", "default per-tool-call timeout, seconds"),
    "TOOL_RATE_LIMIT": ("600/60", "tool calls per user and client, per instance: count/seconds, or off"),
    "TASK_TTL": ("3600", "seconds a task (2026-07-28 tasks extension) is kept after its creation"),
    "TASK_LIMIT": ("20", "most live (working or input_required) tasks of one user and client"),
    "TASK_POLL_INTERVAL": ("1", "seconds between task polls: suggested to clients, and how often an instance reads its running tasks"),
    "TASK_LEASE": (None, "seconds a task's instance vouches for it (renewed every third of it); a task not renewed that long (its instance died) is failed; default the larger of 10 and 5 x TASK_POLL_INTERVAL"),
    "FILES_ROOT": (None, "root directory of the files tool pack"),
    "SKILLS_DIR": (None, "directory of Agent Skills (folders with a SKILL.md) served by the skills extension"),
    "LLM_URL": (None, "Ollama-compatible base URL of the llm tool pack"),
    "METRICS_TOKEN": (None, "bearer token required on /metrics"),
    "RATE_LIMIT_REGISTER": ("20/3600", "registrations per address: count/seconds"),
    "RATE_LIMIT_TOKEN": ("50/900", "token requests per address: count/seconds"),
    "RATE_LIMIT_AUTHORIZE": ("60/900", "authorization requests per address: count/seconds"),
    "RATE_LIMIT_REVOKE": ("50/900", "revocation requests per address: count/seconds"),
    "VAR_DIR": ("./var", "directory for generated development secrets and state"),
}

#: Secret variables that can also be given as C{<NAME>_FILE}: the path of a
#: file holding the value (container and cloud secret managers mount
#: secrets as files). Signing keys are files already
#: (C{JWT_PRIVATE_KEY_FILE}, C{JWT_KEYS_DIR}).
SECRET_VARIABLES: Tuple[str, ...] = (
    "JWT_SECRET",
    "DCR_AUTH_TOKEN",
    "MCP_API_KEY",
    "METRICS_TOKEN",
    "REDIS_PASSWORD",
    "REDIS_URL",
)
for _name in SECRET_VARIABLES:
    VARIABLES[_name + "_FILE"] = (None, f"file holding {_name} (one line; instead of {_name})")
del _name

#: Longest secret file we read.
MAX_SECRET_FILE = 64 * 1024


class ConfigError(Exception):
    """
    The configuration is invalid. C{errors} lists every problem found.
    """

    def __init__(self, errors: List[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@frozen(kw_only=True)
class RateLimit:
    count: int
    seconds: float

    @property
    def refillPerSecond(self) -> float:
        return self.count / self.seconds


@frozen(kw_only=True)
class Config:
    """
    The validated configuration. Tests make variations with L{replace}.
    """

    environment: str = "development"
    host: str = "127.0.0.1"
    port: int = 3000
    listen: Tuple[str, ...] = ()
    metricsListen: Tuple[str, ...] = ()
    serverURL: str = "http://127.0.0.1:3000"
    issuer: str = "http://127.0.0.1:3000"
    jwtSecret: str = field(default="", repr=False)
    jwtPrivateKeyFile: Optional[str] = None
    jwtKeysDir: Optional[str] = None
    jwtKeyPublishDelay: int = 600
    dcrAuthToken: Optional[str] = field(default=None, repr=False)
    dcrOpen: bool = False
    dcrRedirectPatterns: Tuple[str, ...] = DEFAULT_REDIRECT_PATTERNS
    #: Client ID Metadata Documents (CIMD and the CIMD_* variables).
    cimd: bool = True
    cimdAllowedHosts: Tuple[str, ...] = ()
    cimdDeniedHosts: Tuple[str, ...] = ()
    cimdCacheMinSeconds: int = 60
    cimdCacheMaxSeconds: int = 86400
    cimdStaleIfError: int = 3600
    #: CIMD_IDLE_RETENTION: idle document client records are swept after it (0: never).
    cimdIdleRetention: int = 2592000
    cimdFetchTimeout: float = 5.0
    mcpAPIKey: Optional[str] = field(default=None, repr=False)
    #: PRIVATE_KEY_JWT: private_key_jwt client authentication accepted.
    privateKeyJWT: bool = True
    clientAssertionMaxLifetime: int = 300
    clientJWKSCacheSeconds: int = 300
    accessTokenLifetime: int = 3600
    refreshTokenLifetime: int = 7776000
    authorizationCodeLifetime: int = 600
    refreshGraceSeconds: int = 60
    refreshGraceReplays: int = 3
    servicenowInstance: Optional[str] = None
    #: Registration accepts every ServiceNow tenant (SERVICENOW_ANY_INSTANCE).
    servicenowAnyInstance: bool = False
    corsOrigins: Tuple[str, ...] = ()
    store: str = "sqlite"
    storePath: str = "./var/mcpsvc.sqlite3"
    storeTimeout: float = 5.0
    redisURL: Optional[str] = field(default=None, repr=False)
    redisHost: str = "127.0.0.1"
    redisPort: int = 6379
    redisPassword: Optional[str] = field(default=None, repr=False)
    redisDB: int = 0
    redisPrefix: str = "mcpsvc:"
    redisSentinels: Tuple[Tuple[str, int], ...] = ()
    redisSentinelMaster: Optional[str] = None
    deploymentType: str = "single-server"
    trustedProxies: Tuple[str, ...] = ()
    allowedHosts: Tuple[str, ...] = ()
    logLevel: str = "info"
    logFormat: str = "text"
    shutdownTimeout: float = 10.0
    sweepInterval: float = 60.0
    authMode: str = "oauth"
    authorizeMode: str = "consent"
    authorizePageTitle: str = "mcpsvc"
    authorizePageText: Optional[str] = None
    loginUsersFile: str = "./var/users.json"
    loginSessionSeconds: int = 1800
    rememberApprovals: bool = False
    sessions: bool = True
    sessionIdleTimeout: int = 3600
    sessionLimit: int = 100
    streamLimit: int = 10
    streamLimitTotal: int = 1000
    rateLimitInitialize: RateLimit = RateLimit(count=120, seconds=60)
    toolPacks: Tuple[str, ...] = ("core",)
    toolTimeout: float = 30.0
    #: C{None}: tool calls are not rate limited (TOOL_RATE_LIMIT=off).
    toolRateLimit: Optional[RateLimit] = RateLimit(count=600, seconds=60)
    taskTTL: float = 3600.0
    taskPollInterval: float = 1.0
    taskLimit: int = 20
    #: C{TASK_LEASE}; C{None}: the default (L{mcpsvc.mcp.tasks.defaultLease}).
    taskLease: Optional[float] = None
    filesRoot: Optional[str] = None
    skillsDir: Optional[str] = None
    llmURL: Optional[str] = None
    metricsToken: Optional[str] = field(default=None, repr=False)
    rateLimitRegister: RateLimit = RateLimit(count=20, seconds=3600)
    rateLimitToken: RateLimit = RateLimit(count=50, seconds=900)
    rateLimitAuthorize: RateLimit = RateLimit(count=60, seconds=900)
    rateLimitRevoke: RateLimit = RateLimit(count=50, seconds=900)
    varDir: str = "./var"
    #: Notices for the operator produced while loading (generated secrets).
    notices: Tuple[str, ...] = ()

    @property
    def production(self) -> bool:
        return self.environment == "production"

    @property
    def resourceURL(self) -> str:
        """
        The canonical MCP resource URL (RFC 8707), the C{aud} of our tokens.
        """
        return self.serverURL + "/mcp"

    @property
    def allowedOrigins(self) -> Tuple[str, ...]:
        origins = list(self.corsOrigins)
        if self.servicenowInstance:
            origins.insert(0, self.servicenowInstance.rstrip("/"))
        return tuple(dict.fromkeys(origins))

    @property
    def redirectPatterns(self) -> Tuple[str, ...]:
        """
        The redirect URI patterns dynamic registration accepts:
        C{DCR_REDIRECT_PATTERNS}, then C{SERVICENOW_INSTANCE/*} (that
        instance only), then, with C{SERVICENOW_ANY_INSTANCE}, every
        ServiceNow instance.
        """
        patterns = list(self.dcrRedirectPatterns)
        if self.servicenowInstance:
            patterns.append(self.servicenowInstance.rstrip("/") + "/*")
        if self.servicenowAnyInstance:
            patterns.append(SERVICENOW_ANY_INSTANCE_PATTERN)
        return tuple(dict.fromkeys(patterns))

    def replace(self, **changes: Any) -> "Config":
        return attrs.evolve(self, **changes)


# --------------------------------------------------------------------------
# Reading


def readEnvironment(
    environ: Mapping[str, str], envFile: Optional[str] = ".env"
) -> Dict[str, str]:
    """
    Merge C{.env} (if present) under C{environ}: the process environment
    wins, as python-dotenv does by default.
    """
    merged: Dict[str, str] = {}
    if envFile and os.path.exists(envFile):
        from dotenv import dotenv_values

        for key, value in dotenv_values(envFile).items():
            if value is not None:
                merged[key] = value
    for key in VARIABLES:
        if key in environ:
            merged[key] = environ[key]
    if "NODE_ENV" in environ and "ENVIRONMENT" not in environ:
        merged.setdefault("ENVIRONMENT", environ["NODE_ENV"])
    if "ENVIRONMENT" not in merged and "NODE_ENV" in merged:
        merged["ENVIRONMENT"] = merged["NODE_ENV"]
    return merged


def _readSecretFile(path: FilePath) -> Optional[str]:
    try:
        value = path.getContent().decode("utf-8").strip()
    except OSError:
        return None
    return value or None


def _writeSecretFile(path: FilePath, value: str) -> None:
    parent = path.parent()
    if not parent.exists():
        parent.makedirs()
    fd = os.open(path.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.chmod(path.path, stat.S_IRUSR | stat.S_IWUSR)


def ensureDevelopmentSecrets(
    raw: Dict[str, str], generate: Callable[[], str]
) -> Tuple[Dict[str, str], List[str]]:
    """
    In development, fill a missing C{JWT_SECRET} and C{DCR_AUTH_TOKEN} from
    files under C{VAR_DIR}, generating them once (mode 0600). Returns the new
    raw settings and notices for the operator. In production, does nothing:
    validation then reports the missing secret.
    """
    environment = _environment(raw)
    if environment != "development":
        return raw, []
    raw = dict(raw)
    notices: List[str] = []
    varDir = FilePath(os.path.abspath(raw.get("VAR_DIR") or VARIABLES["VAR_DIR"][0] or "./var"))
    for name, fileName in (("JWT_SECRET", "jwt_secret"), ("DCR_AUTH_TOKEN", "dcr_auth_token")):
        if raw.get(name) or raw.get(name + "_FILE"):
            continue
        path = varDir.child(fileName)
        existing = _readSecretFile(path)
        if existing is None:
            existing = generate()
            try:
                _writeSecretFile(path, existing)
            except FileExistsError:  # pragma: no cover - raced another start
                existing = _readSecretFile(path) or existing
            notices.append(
                f"{name} was not set: generated a development value into {path.path} (mode 0600)"
            )
        else:
            notices.append(f"{name} was not set: using the development value in {path.path}")
        raw[name] = existing
    return raw, notices


def _environment(raw: Mapping[str, str]) -> str:
    return (raw.get("ENVIRONMENT") or "development").strip().lower()


# --------------------------------------------------------------------------
# Validation


def _split(value: Optional[str]) -> Tuple[str, ...]:
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _patternHost(pattern: str) -> str:
    rest = pattern.partition("://")[2]
    return rest.split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0].lower()


def _isServiceNowWildcard(pattern: str) -> bool:
    """
    Whether a redirect URI pattern has a wildcard host under a domain every
    ServiceNow tenant shares (C{https://*.service-now.com/...}).
    """
    host = _patternHost(pattern)
    return "*" in host and any(
        host.endswith(domain) or host == domain[1:] for domain in _SERVICENOW_SHARED_DOMAINS
    )


def _isServiceNowAllowed(patterns: Tuple[str, ...]) -> bool:
    return any(
        any(_patternHost(p).endswith(domain) for domain in _SERVICENOW_SHARED_DOMAINS)
        for p in patterns
    )


def _isHTTPURL(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


class _Collector:
    def __init__(self, raw: Mapping[str, str]) -> None:
        self.raw = raw
        self.errors: List[str] = []
        #: How each secret was given, for messages: C{"JWT_SECRET"} or
        #: C{"JWT_SECRET (from JWT_SECRET_FILE)"}.
        self.label: Dict[str, str] = {}

    def secret(self, name: str) -> Optional[str]:
        """
        A secret given as C{name} or as C{name_FILE} (a file holding it:
        one line, surrounding white space and the trailing newline
        stripped). Both set, or an unreadable, empty or multi-line file,
        is an error.
        """
        self.label[name] = name
        fileName = name + "_FILE"
        value = self.get(name)
        path = self.get(fileName)
        if path is None:
            return value
        if value is not None:
            self.errors.append(f"{name} and {fileName} are both set: set only one of them")
            return None
        self.label[name] = f"{name} (from {fileName})"
        try:
            with open(path, "rb") as f:
                content = f.read(MAX_SECRET_FILE + 1)
        except OSError as e:
            self.errors.append(
                f"{fileName} {path!r} cannot be read: {e.strerror or e.__class__.__name__}"
            )
            return None
        if len(content) > MAX_SECRET_FILE:
            self.errors.append(f"{fileName} {path!r} is larger than {MAX_SECRET_FILE} bytes")
            return None
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            self.errors.append(f"{fileName} {path!r} is not UTF-8 text")
            return None
        text = text.strip()
        if not text:
            self.errors.append(f"{fileName} {path!r} is empty")
            return None
        if "\n" in text or "\r" in text:
            self.errors.append(f"{fileName} {path!r} must hold the value on one line")
            return None
        return text

    def get(self, name: str) -> Optional[str]:
        value = self.raw.get(name)
        if value is None or value == "":
            return VARIABLES[name][0] if name in VARIABLES else None
        return value.strip()

    def choice(self, name: str, choices: Tuple[str, ...]) -> str:
        value = (self.get(name) or "").lower()
        if value not in choices:
            self.errors.append(f"{name} must be one of {', '.join(choices)} (got {value!r})")
            return choices[0]
        return value

    def integer(self, name: str, minimum: int = 1, maximum: Optional[int] = None) -> int:
        value = self.get(name) or ""
        try:
            number = int(value)
        except ValueError:
            self.errors.append(f"{name} must be an integer (got {value!r})")
            return minimum
        if number < minimum or (maximum is not None and number > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            self.errors.append(f"{name} must be {bound} (got {number})")
            return minimum
        return number

    def number(self, name: str, minimum: float = 0.0) -> float:
        value = self.get(name) or ""
        try:
            number = float(value)
        except ValueError:
            self.errors.append(f"{name} must be a number (got {value!r})")
            return minimum
        if not number > minimum:
            self.errors.append(f"{name} must be greater than {minimum:g} (got {value})")
            return minimum
        return number

    def boolean(self, name: str) -> bool:
        value = (self.get(name) or "").lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off", ""):
            return False
        self.errors.append(f"{name} must be true or false (got {value!r})")
        return False

    def rate(self, name: str) -> RateLimit:
        value = self.get(name) or ""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*", value)
        if not match or int(match.group(1)) < 1 or float(match.group(2)) <= 0:
            self.errors.append(f"{name} must look like COUNT/SECONDS, e.g. 50/900 (got {value!r})")
            return RateLimit(count=1, seconds=1)
        return RateLimit(count=int(match.group(1)), seconds=float(match.group(2)))


def loadConfig(
    raw: Mapping[str, str], listen: Tuple[str, ...] = ()
) -> Config:
    """
    Validate C{raw} settings (environment names as keys, as produced by
    L{readEnvironment} and the command-line overrides) into a L{Config}.

    @raise ConfigError: listing every problem found.
    """
    c = _Collector(raw)
    notices: List[str] = []
    environment = c.choice("ENVIRONMENT", ENVIRONMENTS)
    production = environment == "production"
    host = c.get("HOST") or "127.0.0.1"
    port = c.integer("PORT", 1, 65535)

    serverURL = c.get("SERVER_URL")
    if serverURL is None:
        if production:
            c.errors.append("SERVER_URL is required in production")
        hostPart = f"[{host}]" if ":" in host else host
        if host in ("0.0.0.0", "::"):
            hostPart = "localhost"
        scheme, publicPort = "http", port
        # In development, follow an explicit first listener's port.
        match = re.match(r"(tcp|ssl):(\d+)(:|$)", listen[0]) if listen else None
        if match and int(match.group(2)) != 0:
            scheme = "https" if match.group(1) == "ssl" else "http"
            publicPort = int(match.group(2))
        serverURL = f"{scheme}://{hostPart}:{publicPort}"
    else:
        parts = urlsplit(serverURL)
        if not _isHTTPURL(serverURL):
            c.errors.append(f"SERVER_URL must be an absolute http(s) URL (got {serverURL!r})")
        elif serverURL.endswith("/"):
            c.errors.append("SERVER_URL must not end with a slash")
        elif parts.path or parts.query or parts.fragment:
            c.errors.append("SERVER_URL must have no path, query or fragment")
        if production and parts.scheme != "https":
            c.errors.append("SERVER_URL must be https:// in production")

    issuer = c.get("JWT_ISSUER") or serverURL
    if c.get("JWT_ISSUER") and (not _isHTTPURL(issuer) or issuer.endswith("/")):
        c.errors.append("JWT_ISSUER must be an absolute URL without a trailing slash")

    jwtSecret = c.secret("JWT_SECRET")
    if not jwtSecret:
        if c.label["JWT_SECRET"] == "JWT_SECRET" and c.get("JWT_SECRET_FILE") is None:
            c.errors.append(
                "JWT_SECRET is required (32 or more bytes; mcpsvc gen-secret makes one), "
                "or JWT_SECRET_FILE naming a file that holds it"
            )
        jwtSecret = ""
    elif len(jwtSecret.encode("utf-8")) < 32:
        c.errors.append(
            f"{c.label['JWT_SECRET']} must be at least 32 bytes "
            f"(got {len(jwtSecret.encode('utf-8'))})"
        )

    keyFile = c.get("JWT_PRIVATE_KEY_FILE")
    if keyFile and not os.path.isfile(keyFile):
        c.errors.append(f"JWT_PRIVATE_KEY_FILE {keyFile!r} is not a readable file")
    keysDir = c.get("JWT_KEYS_DIR")
    publishDelay = c.integer("JWT_KEY_PUBLISH_DELAY", 0, 30 * 86400)
    if keysDir and not os.path.isdir(keysDir):
        c.errors.append(f"JWT_KEYS_DIR {keysDir!r} is not a directory")

    dcrToken = c.secret("DCR_AUTH_TOKEN")
    if dcrToken is not None and len(dcrToken) < 32:
        c.errors.append(
            f"{c.label['DCR_AUTH_TOKEN']} must be at least 32 characters (got {len(dcrToken)})"
        )
    dcrOpen = c.boolean("DCR_OPEN")
    patterns = _split(c.get("DCR_REDIRECT_PATTERNS"))
    for pattern in patterns:
        if not _isHTTPURL(pattern.replace("*", "x")):
            c.errors.append(f"DCR_REDIRECT_PATTERNS entry {pattern!r} is not an http(s) URL pattern")

    cimdValue = (c.get("CIMD") or "").lower()
    if cimdValue not in ("on", "off", "true", "false"):
        c.errors.append(f"CIMD must be on or off (got {cimdValue!r})")
    cimd = cimdValue in ("on", "true")
    cimdHosts = {}
    for name in ("CIMD_ALLOWED_HOSTS", "CIMD_DENIED_HOSTS"):
        cimdHosts[name] = tuple(h.lower().rstrip(".") for h in _split(c.get(name)))
        for entry in cimdHosts[name]:
            if not _HOST_ENTRY.fullmatch(entry):
                c.errors.append(f"{name} entry {entry!r} is not a host name or *.domain")
    cimdMin = c.integer("CIMD_CACHE_MIN_SECONDS", 0, 86400)
    cimdMax = c.integer("CIMD_CACHE_MAX_SECONDS", 0, 30 * 86400)
    if cimdMin > cimdMax:
        c.errors.append(
            f"CIMD_CACHE_MIN_SECONDS ({cimdMin}) must not exceed CIMD_CACHE_MAX_SECONDS ({cimdMax})"
        )
    cimdStale = c.integer("CIMD_STALE_IF_ERROR", 0, 30 * 86400)
    cimdIdle = c.integer("CIMD_IDLE_RETENTION", 0, 10 * 365 * 86400)
    if 0 < cimdIdle < 86400:
        c.errors.append(f"CIMD_IDLE_RETENTION must be 0 or at least 86400 seconds (got {cimdIdle})")
    cimdTimeout = c.number("CIMD_FETCH_TIMEOUT")
    if cimdTimeout > 60:
        c.errors.append(f"CIMD_FETCH_TIMEOUT must be at most 60 seconds (got {cimdTimeout:g})")

    mcpAPIKey = c.secret("MCP_API_KEY")
    if mcpAPIKey is not None and len(mcpAPIKey) < 16:
        c.errors.append(f"{c.label['MCP_API_KEY']} must be at least 16 characters")

    accessLifetime = c.integer("ACCESS_TOKEN_LIFETIME")
    refreshLifetime = c.integer("REFRESH_TOKEN_LIFETIME")
    codeLifetime = c.integer("AUTHORIZATION_CODE_LIFETIME")
    grace = c.integer("REFRESH_GRACE_SECONDS", 0)
    graceReplays = c.integer("REFRESH_GRACE_REPLAYS", 0, 100)

    snow = c.get("SERVICENOW_INSTANCE")
    if snow is not None:
        parts = urlsplit(snow)
        if parts.scheme != "https" or not parts.netloc:
            c.errors.append(f"SERVICENOW_INSTANCE must be an https:// URL (got {snow!r})")
        snow = snow.rstrip("/")
    anyInstanceValue = (c.get("SERVICENOW_ANY_INSTANCE") or "").lower()
    if anyInstanceValue in ("on", "true"):
        anyInstance = True
    elif anyInstanceValue in ("off", "false"):
        anyInstance = False
    else:
        if anyInstanceValue:
            c.errors.append(
                f"SERVICENOW_ANY_INSTANCE must be on or off (got {anyInstanceValue!r})"
            )
        # Unset: a development server with no instance named accepts any
        # (someone trying mcpsvc with a developer instance); production,
        # or naming the instance, pins registration to it.
        anyInstance = not production and snow is None
    for pattern in patterns:
        if not anyInstance and _isServiceNowWildcard(pattern):
            c.errors.append(
                f"DCR_REDIRECT_PATTERNS entry {pattern!r} lets every ServiceNow instance "
                "register, including free developer instances anyone can get: remove it and "
                "set SERVICENOW_INSTANCE to your instance, or set SERVICENOW_ANY_INSTANCE=on "
                "to allow every instance on purpose"
            )
    if (production and not anyInstance and snow is None and (dcrToken or dcrOpen)
            and not _isServiceNowAllowed(patterns)):
        notices.append(
            "SERVICENOW_INSTANCE is not set: no ServiceNow instance can register dynamically"
        )
    elif anyInstance:
        notices.append(
            "Dynamic registration accepts the redirect URI of every ServiceNow instance "
            + ("(SERVICENOW_ANY_INSTANCE=on)" if anyInstanceValue
               else "(development without SERVICENOW_INSTANCE)")
            + ": set SERVICENOW_INSTANCE to accept only yours"
        )
    cors = _split(c.get("CORS_ORIGINS"))
    for origin in cors:
        if origin == "*" or not _isHTTPURL(origin):
            c.errors.append(f"CORS_ORIGINS entry {origin!r} must be an explicit http(s) origin")

    store = c.choice("STORE", STORES)
    storeTimeout = c.number("STORE_TIMEOUT")
    redisPort = c.integer("REDIS_PORT", 1, 65535)
    redisDB = c.integer("REDIS_DB", 0)
    redisURL = c.secret("REDIS_URL")
    if redisURL is not None and urlsplit(redisURL).scheme not in ("redis", "rediss"):
        c.errors.append(f"{c.label['REDIS_URL']} must start with redis:// or rediss://")
    redisPassword = c.secret("REDIS_PASSWORD")
    sentinels: List[Tuple[str, int]] = []
    for entry in _split(c.get("REDIS_SENTINELS")):
        hostName, _, portText = entry.rpartition(":")
        if not hostName or not portText.isdigit():
            c.errors.append(f"REDIS_SENTINELS entry {entry!r} must be host:port")
        else:
            sentinels.append((hostName.strip("[]"), int(portText)))
    master = c.get("REDIS_SENTINEL_MASTER")
    if sentinels and not master:
        c.errors.append("REDIS_SENTINELS needs REDIS_SENTINEL_MASTER")
    if production and store == "redis":
        plainHost = None
        if redisURL is not None and urlsplit(redisURL).scheme == "redis":
            parsedURL = urlsplit(redisURL)
            if parsedURL.password or redisPassword:
                plainHost = parsedURL.hostname or "127.0.0.1"
        elif redisURL is None and redisPassword and not sentinels:
            plainHost = c.get("REDIS_HOST") or "127.0.0.1"
        if sentinels and redisPassword and (redisURL is None or urlsplit(redisURL).scheme == "redis"):
            plainHost = plainHost or "the Sentinels' master"
        if plainHost is not None and plainHost not in ("127.0.0.1", "::1", "localhost"):
            notices.append(
                f"The Redis password travels in clear to {plainHost} (redis://, not rediss://): "
                "keep that network private, or use rediss://"
            )
    if sentinels and redisURL is not None and urlsplit(redisURL).scheme == "rediss":
        c.errors.append(
            f"REDIS_SENTINELS with a rediss:// {c.label['REDIS_URL']} is not supported: the "
            "connections to the Sentinels and to the master they name would not use TLS and "
            "would send the password in clear. Use one master over rediss:// (no "
            "REDIS_SENTINELS), or Sentinel with redis:// on a private network"
        )

    deployment = c.choice("DEPLOYMENT_TYPE", DEPLOYMENT_TYPES)
    if deployment == "multi-server" and store != "redis":
        c.errors.append("DEPLOYMENT_TYPE=multi-server requires STORE=redis")

    proxies = _split(c.get("TRUSTED_PROXIES"))
    for proxy in proxies:
        try:
            network = ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            c.errors.append(f"TRUSTED_PROXIES entry {proxy!r} is not an address or network")
            continue
        if production and network.prefixlen == 0:
            c.errors.append(
                f"TRUSTED_PROXIES entry {proxy!r} trusts every address, which is refused in "
                "production: any client could claim any address in X-Forwarded-For and escape "
                "the per-address rate limits and sign-in throttling. List your proxies' "
                "addresses or networks"
            )

    logLevel = c.choice("LOG_LEVEL", LOG_LEVELS)
    logFormat = c.choice("LOG_FORMAT", LOG_FORMATS)
    shutdownTimeout = c.number("SHUTDOWN_TIMEOUT")
    sweepInterval = c.number("SWEEP_INTERVAL")
    authMode = c.choice("AUTH_MODE", AUTH_MODES)
    if authMode == "none" and production:
        c.errors.append("AUTH_MODE=none is refused in production")
    authorizeMode = c.choice("AUTHORIZE_MODE", AUTHORIZE_MODES)
    if production and authorizeMode == "auto" and dcrOpen and not dcrToken:
        c.errors.append(
            "AUTHORIZE_MODE=auto with open registration (DCR_OPEN=true and no "
            "DCR_AUTH_TOKEN) is refused in production: anyone could register a client and "
            "get tokens without a person being asked. Set DCR_AUTH_TOKEN, or use "
            "AUTHORIZE_MODE=consent or login"
        )
    if production and authorizeMode == "auto" and cimd:
        c.errors.append(
            "AUTHORIZE_MODE=auto with Client ID Metadata Documents (CIMD=on, the default) is "
            "refused in production: anyone could publish a metadata document, use its URL as "
            "a client_id and get tokens without a person being asked. Set CIMD=off, or use "
            "AUTHORIZE_MODE=consent or login"
        )
    pageTitle = c.get("AUTHORIZE_PAGE_TITLE") or "mcpsvc"
    if len(pageTitle) > 80:
        c.errors.append(f"AUTHORIZE_PAGE_TITLE must be at most 80 characters (got {len(pageTitle)})")
    pageText = c.get("AUTHORIZE_PAGE_TEXT")
    if pageText is not None and len(pageText) > 1000:
        c.errors.append(f"AUTHORIZE_PAGE_TEXT must be at most 1000 characters (got {len(pageText)})")
    loginSession = c.integer("LOGIN_SESSION_SECONDS", 60, 30 * 86400)
    rememberValue = (c.get("REMEMBER_APPROVALS") or "").lower()
    if rememberValue not in ("on", "off", "true", "false"):
        c.errors.append(f"REMEMBER_APPROVALS must be on or off (got {rememberValue!r})")
    sessionsValue = (c.get("SESSIONS") or "").lower()
    if sessionsValue not in ("on", "off", "true", "false"):
        c.errors.append(f"SESSIONS must be on or off (got {sessionsValue!r})")
    sessions = sessionsValue in ("on", "true")
    privateKeyJWTValue = (c.get("PRIVATE_KEY_JWT") or "").lower()
    if privateKeyJWTValue not in ("on", "off", "true", "false"):
        c.errors.append(f"PRIVATE_KEY_JWT must be on or off (got {privateKeyJWTValue!r})")
    assertionLifetime = c.integer("CLIENT_ASSERTION_MAX_LIFETIME", 10, 3600)
    jwksCacheSeconds = c.integer("CLIENT_JWKS_CACHE_SECONDS", 10, 86400)
    idle = c.integer("SESSION_IDLE_TIMEOUT")
    sessionLimit = c.integer("SESSION_LIMIT", maximum=100_000)
    streamLimit = c.integer("STREAM_LIMIT", maximum=100_000)
    streamLimitTotal = c.integer("STREAM_LIMIT_TOTAL", maximum=1_000_000)
    packs = _split(c.get("TOOL_PACKS"))
    toolTimeout = c.number("TOOL_TIMEOUT")
    taskTTL = float(c.integer("TASK_TTL", 10, 30 * 86400))
    taskPollInterval = c.number("TASK_POLL_INTERVAL")
    taskLimit = c.integer("TASK_LIMIT", 1, 10000)
    if taskPollInterval > 300:
        c.errors.append(f"TASK_POLL_INTERVAL must be at most 300 seconds (got {taskPollInterval:g})")
    taskLease: Optional[float] = None
    if c.get("TASK_LEASE") is not None:
        taskLease = c.number("TASK_LEASE")
        if taskLease > 0 and taskLease < 3 * taskPollInterval:
            c.errors.append(
                f"TASK_LEASE must be at least 3 x TASK_POLL_INTERVAL ({3 * taskPollInterval:g}), "
                f"so it is renewed in time (got {taskLease:g})")
        elif taskLease > taskTTL:
            c.errors.append(f"TASK_LEASE must be at most TASK_TTL ({taskTTL:g}) (got {taskLease:g})")
    toolRateLimit: Optional[RateLimit] = None
    if (c.get("TOOL_RATE_LIMIT") or "").strip().lower() not in ("off", "false"):
        toolRateLimit = c.rate("TOOL_RATE_LIMIT")
    filesRoot = c.get("FILES_ROOT")
    if filesRoot is not None and not os.path.isdir(filesRoot):
        c.errors.append(f"FILES_ROOT {filesRoot!r} is not a directory")
    skillsDir = c.get("SKILLS_DIR")
    if skillsDir is not None and not os.path.isdir(skillsDir):
        c.errors.append(f"SKILLS_DIR {skillsDir!r} is not a directory")
    llmURL = c.get("LLM_URL")
    if llmURL is not None and not _isHTTPURL(llmURL):
        c.errors.append(f"LLM_URL must be an http(s) URL (got {llmURL!r})")
    metricsToken = c.secret("METRICS_TOKEN")
    if metricsToken is not None and len(metricsToken) < 16:
        c.errors.append(f"{c.label['METRICS_TOKEN']} must be at least 16 characters")

    rates = {
        name: c.rate(name)
        for name in (
            "RATE_LIMIT_REGISTER",
            "RATE_LIMIT_TOKEN",
            "RATE_LIMIT_AUTHORIZE",
            "RATE_LIMIT_REVOKE",
            "RATE_LIMIT_INITIALIZE",
        )
    }
    if not listen:
        iface = host.replace(":", "\\:")
        listen = (f"tcp:{port}:interface={iface}",)

    if c.errors:
        raise ConfigError(c.errors)

    return Config(
        environment=environment,
        host=host,
        port=port,
        listen=tuple(listen),
        serverURL=serverURL,
        issuer=issuer,
        jwtSecret=jwtSecret,
        jwtPrivateKeyFile=keyFile,
        jwtKeysDir=keysDir,
        jwtKeyPublishDelay=publishDelay,
        dcrAuthToken=dcrToken,
        dcrOpen=dcrOpen,
        dcrRedirectPatterns=patterns,
        cimd=cimd,
        cimdAllowedHosts=cimdHosts["CIMD_ALLOWED_HOSTS"],
        cimdDeniedHosts=cimdHosts["CIMD_DENIED_HOSTS"],
        cimdCacheMinSeconds=cimdMin,
        cimdCacheMaxSeconds=cimdMax,
        cimdStaleIfError=cimdStale,
        cimdIdleRetention=cimdIdle,
        cimdFetchTimeout=cimdTimeout,
        mcpAPIKey=mcpAPIKey,
        privateKeyJWT=privateKeyJWTValue in ("on", "true"),
        clientAssertionMaxLifetime=assertionLifetime,
        clientJWKSCacheSeconds=jwksCacheSeconds,
        accessTokenLifetime=accessLifetime,
        refreshTokenLifetime=refreshLifetime,
        authorizationCodeLifetime=codeLifetime,
        refreshGraceSeconds=grace,
        refreshGraceReplays=graceReplays,
        servicenowInstance=snow,
        servicenowAnyInstance=anyInstance,
        corsOrigins=cors,
        store=store,
        storePath=c.get("STORE_PATH") or "./var/mcpsvc.sqlite3",
        storeTimeout=storeTimeout,
        redisURL=redisURL,
        redisHost=c.get("REDIS_HOST") or "127.0.0.1",
        redisPort=redisPort,
        redisPassword=redisPassword,
        redisDB=redisDB,
        redisPrefix=c.get("REDIS_PREFIX") or "mcpsvc:",
        redisSentinels=tuple(sentinels),
        redisSentinelMaster=master,
        deploymentType=deployment,
        trustedProxies=proxies,
        allowedHosts=_split(c.get("ALLOWED_HOSTS")),
        logLevel=logLevel,
        logFormat=logFormat,
        shutdownTimeout=shutdownTimeout,
        sweepInterval=sweepInterval,
        authMode=authMode,
        authorizeMode=authorizeMode,
        authorizePageTitle=pageTitle,
        authorizePageText=pageText,
        loginUsersFile=c.get("LOGIN_USERS_FILE") or "./var/users.json",
        loginSessionSeconds=loginSession,
        rememberApprovals=rememberValue in ("on", "true"),
        sessions=sessions,
        sessionIdleTimeout=idle,
        toolPacks=packs,
        toolTimeout=toolTimeout,
        toolRateLimit=toolRateLimit,
        taskTTL=taskTTL,
        taskPollInterval=taskPollInterval,
        taskLimit=taskLimit,
        taskLease=taskLease,
        filesRoot=filesRoot,
        skillsDir=skillsDir,
        llmURL=llmURL,
        metricsToken=metricsToken,
        rateLimitRegister=rates["RATE_LIMIT_REGISTER"],
        rateLimitToken=rates["RATE_LIMIT_TOKEN"],
        rateLimitAuthorize=rates["RATE_LIMIT_AUTHORIZE"],
        rateLimitRevoke=rates["RATE_LIMIT_REVOKE"],
        rateLimitInitialize=rates["RATE_LIMIT_INITIALIZE"],
        sessionLimit=sessionLimit,
        streamLimit=streamLimit,
        streamLimitTotal=streamLimitTotal,
        varDir=c.get("VAR_DIR") or "./var",
        notices=tuple(notices),
    )


def summary(config: Config) -> Dict[str, Any]:
    """
    A loggable summary of C{config}: secrets appear only as lengths.
    """
    secretLength = lambda value: len(value) if value else 0  # noqa: E731
    return {
        "environment": config.environment,
        "serverURL": config.serverURL,
        "issuer": config.issuer,
        "listen": list(config.listen),
        "store": config.store,
        "deploymentType": config.deploymentType,
        "authMode": config.authMode,
        "authorizeMode": config.authorizeMode,
        "sessions": config.sessions,
        "toolPacks": list(config.toolPacks),
        "jwtSecretLength": secretLength(config.jwtSecret),
        "signing": "ES256/RS256 key" if config.jwtPrivateKeyFile or config.jwtKeysDir else "HS256",
        "dcrAuthTokenLength": secretLength(config.dcrAuthToken),
        "dcrOpen": config.dcrOpen,
        "cimd": config.cimd,
        "mcpAPIKeyLength": secretLength(config.mcpAPIKey),
        "privateKeyJWT": config.privateKeyJWT,
        "metricsTokenLength": secretLength(config.metricsToken),
        "corsOrigins": list(config.allowedOrigins),
        "redirectPatterns": list(config.redirectPatterns),
    }
