"""One image URL to bytes: timeouts, a byte limit, redirects followed by hand so every hop passes the address guard.

requests would follow redirects on its own, but then a public URL could bounce the request to 169.254.169.254 unseen;
so redirects are followed here, at most `max_redirects` of them, and each target is checked by `url_guard` before it
is requested. Failures come back as one of two exceptions whose message is the row's status: `Rejected` (final) or
`Retryable` (a timeout, a connection error or a 5xx, worth another attempt).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from phi3v_ray.data.url_guard import BlockedAddress, check_host, check_peer

if TYPE_CHECKING:
    from phi3v_ray.data.fetch import FetchOptions

USER_AGENT = "phi3v-ray-fetch/0.1"
_thread_state = threading.local()


class Rejected(Exception):
    """A response that will not become an image; the message is the row's status."""


class Retryable(Exception):
    """A failure that may pass on another attempt; the message is the status if attempts run out."""


def _session() -> Any:  # requests.Session, one per thread (Session is not documented as thread-safe)
    import requests

    session = getattr(_thread_state, "session", None)
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        _thread_state.session = session
    return session


def _is_read_timeout(error: Exception) -> bool:
    """Whether a requests error wraps urllib3's read timeout (raised while streaming the body)."""
    from urllib3.exceptions import ReadTimeoutError

    return any(isinstance(arg, ReadTimeoutError) for arg in error.args)


def _host_and_port(url: str) -> tuple[str, int]:
    """The host and port a URL connects to; Rejected for a URL that names none or another scheme."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise Rejected(f"bad_url: {str(error)[:80]}") from error
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise Rejected(f"bad_url: {url[:60]!r} is not an http(s) URL with a host")
    return parts.hostname, port or (443 if parts.scheme.lower() == "https" else 80)


def _peer_address(response: Any) -> str | None:
    """The address the response came from (None when urllib3 does not expose it)."""
    candidates = (
        lambda: response.raw._fp.fp.raw._sock,  # the socket http.client reads the body from
        lambda: response.raw._connection.sock,  # a kept-alive connection
    )
    for candidate in candidates:
        try:
            sock = candidate()
            if sock is not None:
                return str(sock.getpeername()[0])
        except (AttributeError, OSError, IndexError):
            continue
    return None


def _open(url: str, options: FetchOptions, *, via_redirect: bool) -> Any:
    """GET one URL (no redirects) after checking where it leads; the caller closes the streaming response."""
    import requests

    host, port = _host_and_port(url)
    allow = options.allow_private_addresses
    try:
        check_host(host, port, allow_private=allow, via_redirect=via_redirect)
    except BlockedAddress as blocked:
        raise Rejected(str(blocked)) from None
    except OSError as error:  # the name does not resolve (now): as retryable as any connection error
        raise Retryable(f"connection_error: cannot resolve {host} ({str(error)[:60]})") from error
    response = _session().get(
        url, timeout=(options.connect_timeout_s, options.read_timeout_s), stream=True, allow_redirects=False
    )
    if not allow and not requests.utils.get_environ_proxies(url):  # through a proxy the peer is the proxy
        try:
            check_peer(host, _peer_address(response), allow_private=False, via_redirect=via_redirect)
        except BlockedAddress as blocked:
            response.close()
            raise Rejected(str(blocked)) from None
    return response


def _read_body(response: Any, options: FetchOptions) -> bytes:
    """The body of a final (non-redirect) response, within the byte limit."""
    if response.status_code >= 500:
        raise Retryable(f"http_error: HTTP {response.status_code}")
    if response.status_code >= 400:
        raise Rejected(f"http_error: HTTP {response.status_code}")
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > options.max_bytes:
        raise Rejected(f"too_large: {declared} bytes, expected at most {options.max_bytes}")
    body = bytearray()
    for chunk in response.iter_content(chunk_size=65536):
        body += chunk
        if len(body) > options.max_bytes:
            raise Rejected(f"too_large: over {options.max_bytes} bytes")
    return bytes(body)


def _follow(url: str, options: FetchOptions) -> bytes:
    """Request the URL and follow at most `max_redirects` redirects, each target checked before it is asked."""
    current = url
    for hop in range(options.max_redirects + 1):
        with _open(current, options, via_redirect=hop > 0) as response:
            if not response.is_redirect:
                return _read_body(response, options)
            current = urljoin(current, response.headers["Location"])
    raise Rejected(f"too_many_redirects: more than {options.max_redirects}")


def download(url: str, options: FetchOptions) -> bytes:
    """One image's bytes; raises Rejected (final) or Retryable (try again)."""
    import requests

    try:
        return _follow(url, options)
    except requests.Timeout as error:
        raise Retryable(f"timeout: no answer within {options.read_timeout_s:g}s") from error
    except requests.exceptions.ChunkedEncodingError as error:
        raise Retryable("truncated_image: connection closed before the declared length") from error
    except requests.ConnectionError as error:
        if _is_read_timeout(error):  # a stall mid-body: requests reports it as a ConnectionError
            raise Retryable(f"timeout: no data within {options.read_timeout_s:g}s") from error
        raise Retryable(f"connection_error: {str(error)[:80]}") from error
    except requests.exceptions.InvalidURL as error:
        raise Rejected(f"bad_url: {str(error)[:80]}") from error
    except requests.RequestException as error:
        raise Rejected(f"request_error: {str(error)[:80]}") from error
