"""Redis URL forms (README "Redis for production"): parsing, the cluster hash-tag rule, and redaction
that never shows a secret, also of URLs that are not well-formed."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings, strategies as st
from redis.cluster import key_slot

from frontend.config import load_settings
from frontend.errors import ConfigError
from frontend.redis_conn import Endpoint
from frontend.redis_url import RedisUrlError, check_prefix, hash_tag, parse_url, redact_url


def test_one_server_urls_are_left_to_redis_py():
    for url in ("redis://127.0.0.1:6379/0", "rediss://:pw@h/1", "unix:///tmp/r.sock?db=2"):
        target = parse_url(url)
        assert target.kind == "direct" and target.url == url
    assert parse_url("rediss://h").tls and not parse_url("redis://h").tls


def test_sentinel_url():
    t = parse_url("redis+sentinel://app:p%40ss@10.0.0.1:26380,10.0.0.2,[::1]:5000/mymaster/3"
                  "?sentinel_password=sp&sentinel_username=su")
    assert (t.kind, t.tls, t.service, t.db) == ("sentinel", False, "mymaster", 3)
    assert t.hosts == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 5000))
    assert (t.username, t.password, t.sentinel_username, t.sentinel_password) == ("app", "p@ss", "su", "sp")
    assert "p@ss" not in repr(t) and "sp" not in repr(t).replace("sentinel", "")
    assert parse_url("redis+sentinel://h1/svc").db == 0
    assert parse_url("redis+sentinel://h1/svc", sentinel_password="set").sentinel_password == "set"
    assert parse_url("redis+sentinel://h1/svc?sentinel_password=q", sentinel_password="set").sentinel_password == "set"
    t = parse_url("rediss+sentinel://:pw@h1:1,h2:2/svc/0?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem")
    assert t.tls and t.password == "pw" and t.username is None
    assert t.tls_options == {"ssl": True, "ssl_cert_reqs": "none", "ssl_ca_certs": "/ca.pem"}
    assert t.node_kwargs() == {"db": 0, "username": None, "password": "pw", "ssl": True, "ssl_cert_reqs": "none",
                               "ssl_ca_certs": "/ca.pem"}


def test_cluster_url():
    t = parse_url("redis+cluster://:pw@h1:7000,h2:7001")
    assert (t.kind, t.hosts, t.password, t.db) == ("cluster", (("h1", 7000), ("h2", 7001)), "pw", 0)
    assert parse_url("rediss+cluster://h1/0").hosts == (("h1", 6379),)
    assert parse_url("rediss+cluster://h1/").tls


@pytest.mark.parametrize("url, words", [
    ("http://h/0", "unknown Redis URL scheme"),
    ("h:6379", "must look like"),
    ("redis+sentinel://h1:1,h2:2", "name the monitored service"),
    ("redis+sentinel://h1:1/svc/x", "database must be a number"),
    ("redis+sentinel://h1:1/svc/0/more", "path is /service/db"),
    ("redis+sentinel://h1:99999/svc", "is not host:port"),
    ("redis+sentinel://h1:x/svc", "is not host:port"),
    ("redis+sentinel:///svc", "at least one host"),
    ("redis+sentinel://h1/svc?sentinel_pasword=x", "unknown option 'sentinel_pasword'"),
    ("redis+sentinel://h1/svc?ssl_ca_certs=/x", "need a rediss scheme"),
    ("redis+cluster://h1/2", "only database 0"),
    ("redis+cluster://h1?sentinel_password=x", "unknown option"),
    ("rediss+cluster://h1?ssl_cert_reqs=maybe", "ssl_cert_reqs must be"),
])
def test_bad_urls_are_refused_with_a_reason(url, words):
    with pytest.raises(RedisUrlError, match=words):
        parse_url(url)


def test_errors_never_show_the_password():
    for url in ("redis+sentinel://:hunter2@h1:x/svc", "redis+cluster://:hunter2@h1/5",
                "redis+sentinel://:hunter2@h1/svc?bogus=1"):
        with pytest.raises(RedisUrlError) as caught:
            parse_url(url)
        assert "hunter2" not in str(caught.value)


def test_hash_tag_rule():
    assert hash_tag("{gr}:") == "gr" and hash_tag("prod:{a b}:") == "a b"
    for prefix in ("", "prod:", "{}:", "{gr", "gr}", "}{gr"):
        assert hash_tag(prefix) is None, prefix
    check_prefix(parse_url("redis+sentinel://h/s"), "")  # only a cluster needs one
    check_prefix(parse_url("redis+cluster://h"), "{gr}:")
    with pytest.raises(RedisUrlError, match="hash tag"):
        check_prefix(parse_url("redis+cluster://h"), "prod:")


def test_settings_refuse_a_cluster_without_a_hash_tag_and_bad_wait_values():
    with pytest.raises(ConfigError, match=r"key_prefix must hold a hash tag.*'prod:'"):
        load_settings(env={}, overrides={"redis_url": "redis+cluster://h1:7000", "key_prefix": "prod:"})
    s = load_settings(env={"GREENROOM_REDIS_URL": "redis+cluster://h1:7000", "GREENROOM_KEY_PREFIX": "{p}:",
                           "GREENROOM_REDIS_WAIT_REPLICAS": "1", "GREENROOM_REDIS_SENTINEL_PASSWORD": "sp"})
    assert (s.redis_wait_replicas, s.redis_wait_timeout, s.redis_sentinel_password) == (1, 1.0, "sp")
    assert "sp'" not in repr(s)
    with pytest.raises(ConfigError, match="redis_wait_replicas"):
        load_settings(env={}, overrides={"redis_wait_replicas": -1})
    with pytest.raises(ConfigError, match="redis_wait_timeout"):
        load_settings(env={}, overrides={"redis_wait_timeout": 10})
    with pytest.raises(ConfigError, match="unknown Redis URL scheme"):
        load_settings(env={}, overrides={"redis_url": "http://h"})


def test_an_endpoint_is_built_without_io_and_checks_the_prefix():
    assert Endpoint("redis+sentinel://127.0.0.1:1/svc").kind == "sentinel"
    assert Endpoint("redis+cluster://127.0.0.1:1", key_prefix="{gr}:x").slot == key_slot(b"gr")
    with pytest.raises(ValueError, match="hash tag"):  # backend_sdk: Backend(url) raises ValueError
        Endpoint("redis+cluster://127.0.0.1:1")


@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
    ("rediss://user:s3cret@host/0", "rediss://user:***@host/0"),
    ("redis://host:6379/0", "redis://host:6379/0"),
    ("redis+sentinel://:s3cret@h1:26379,h2:26379/greenroom/0", "redis+sentinel://:***@h1:26379,h2:26379/greenroom/0"),
    ("redis+sentinel://h1,h2/svc?sentinel_password=s3cret&ssl_cert_reqs=none",
     "redis+sentinel://h1,h2/svc?sentinel_password=***"),
    ("rediss+cluster://app:s3cret@h1:7000,h2:7001/?ssl_keyfile=/k.pem",
     "rediss+cluster://app:***@h1:7000,h2:7001/?ssl_keyfile=/k.pem"),
    ("redis://:p@ss/w?rd@host:1/0", "redis://:***@host:1/0"),
    ("unix://:s3cret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
    ("redis+sentinel://h/s?ssl_cert_reqs=none&sentinel_password=ab&ssl_check_hostname=cd",
     "redis+sentinel://h/s?ssl_cert_reqs=none&sentinel_password=***"),
])
def test_redaction(url, shown):
    assert redact_url(url) == shown


_secret = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=4, max_size=24)


@settings(max_examples=300, deadline=None)
@given(secret=_secret, scheme=st.sampled_from(["redis", "rediss", "redis+sentinel", "rediss+cluster", "unix"]),
       user=st.sampled_from(["", "app"]), where=st.sampled_from(["userinfo", "query"]))
def test_redaction_never_shows_a_secret(secret, scheme, user, where):
    """Whatever the password holds (@, /, ?, :, &, =, spaces), unescaped: it is never shown."""
    if where == "userinfo":
        template = f"{scheme}://{user}:{{}}@h1:1,h2:2/svc/0?ssl_cert_reqs=none"
    else:
        template = f"{scheme}://h1:1,h2:2/svc/0?sentinel_password={{}}&x=1"
    assume(secret not in template.format("***"))  # not a word the URL holds anyway
    assert secret not in redact_url(template.format(secret))


def test_a_reload_keeps_the_redis_identity_and_defers_the_wait_settings(caplog):
    from frontend.reload import reload_settings, report

    old = load_settings(env={}, overrides={"redis_sentinel_password": "pw-one"})
    new = reload_settings(lambda: load_settings(env={}, overrides={"redis_sentinel_password": "pw-two",
                                                                   "redis_wait_replicas": 1}), old)
    assert new.redis_sentinel_password == "pw-one" and new.redis_wait_replicas == 1
    with caplog.at_level("WARNING"):
        report(old, new, 0)
    assert "redis_wait_replicas take effect at the next restart" in caplog.text
    assert "pw-one" not in caplog.text and "pw-two" not in caplog.text
