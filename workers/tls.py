"""`rediss://` URLs for Celery: TLS with certificate verification on by default.

Celery's Redis result backend refuses a `rediss://` URL without `ssl_cert_reqs`, and kombu's Redis
transport takes one as `CERT_NONE` (TLS without verification). Legato's settings take a plain
`rediss://:password@host:6380/0`, so this adds `ssl_cert_reqs=required` unless the URL says
otherwise; `ssl_ca_certs=/path/ca.pem` (also a URL parameter) names a private CA. redis-py, which
the run store uses, reads the same parameters.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def verified(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("ssl_cert_reqs", "required")
    return urlunsplit(parts._replace(query=urlencode(query)))
