"""The lines `vocalborn up` (and `vocalborn link`) print for the clients: the environment the
command-line client reads, and the web page's link with a short-lived token in its fragment
(a fragment never leaves the browser, so the token reaches no server log)."""

from __future__ import annotations

import shlex

LINK_TOKEN_TTL_SECONDS = 3600  # the page keeps it in memory only; `vocalborn link` makes another


def web_link(api_url: str, token: str) -> str:
    return f"{api_url.rstrip('/')}/#token={token}"


def client_lines(api_url: str, token: str, link_token: str) -> str:
    return (
        f"export VOCALBORN_API_URL={shlex.quote(api_url)}\n"
        f"export VOCALBORN_TOKEN={shlex.quote(token)}\n"
        f"Web page (token valid {LINK_TOKEN_TTL_SECONDS // 60} min): "
        f"{web_link(api_url, link_token)}\n"
    )
