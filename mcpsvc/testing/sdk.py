"""
Helpers for driving the official MCP Python SDK's OAuth client in tests.
"""

from __future__ import annotations

from typing import Optional

from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

__all__ = ["ClientMetadataWithIAT", "MemoryStorage"]


class ClientMetadataWithIAT(OAuthClientMetadata):
    """
    RFC 7591 has no initial access token field and the SDK sends none;
    mcpsvc also accepts it as C{token_value} in the registration body.
    """

    token_value: Optional[str] = None


class MemoryStorage:
    """
    The SDK's C{TokenStorage}, in memory.
    """

    def __init__(self) -> None:
        self.tokens: Optional[OAuthToken] = None
        self.clientInfo: Optional[OAuthClientInformationFull] = None

    async def get_tokens(self) -> Optional[OAuthToken]:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Optional[OAuthClientInformationFull]:
        return self.clientInfo

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.clientInfo = client_info
