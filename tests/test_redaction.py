"""redaction: credentials never reach messages or stored state, whatever the URL's shape."""

import pytest

from deepstep.redaction import redact_url

URLS = [
    # (url, shown with keep_user=True, shown with keep_user=False)
    (
        "postgresql://me:pa%40ss@db.example:5433/x?sslmode=require",
        "postgresql://me:***@db.example:5433/x?sslmode=require",
        "postgresql://***@db.example:5433/x?sslmode=require",
    ),
    ("postgresql://me@127.0.0.1/x", "postgresql://me@127.0.0.1/x", "postgresql://***@127.0.0.1/x"),
    (
        "postgresql://me:pw@127.0.0.1:1,127.0.0.2:2/db",
        "postgresql://me:***@127.0.0.1:1,127.0.0.2:2/db",
        "postgresql://***@127.0.0.1:1,127.0.0.2:2/db",
    ),
    ("postgresql://me:pw@[::1/db", "postgresql://me:***@[::1/db", "postgresql://***@[::1/db"),
    (
        "https://h.example/v1?api-key=K&Password=P&mode=x",
        "https://h.example/v1?api-key=***&Password=***&mode=x",
        "https://h.example/v1?api-key=***&Password=***&mode=x",
    ),
    ("https://h.example/v1?bare-token", "https://h.example/v1?***", "https://h.example/v1?***"),
    ("https://h.example/v1#access_token=T", "https://h.example/v1#***", "https://h.example/v1#***"),
    ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1"),
    ("me:pw@host/db", "***", "***"),
    ("not a url", "not a url", "not a url"),
]


@pytest.mark.parametrize(("url", "with_user", "without_user"), URLS)
def test_redact_url_hides_passwords_secret_parameters_and_fragments(url, with_user, without_user):
    assert redact_url(url) == with_user
    assert redact_url(url, keep_user=False) == without_user
