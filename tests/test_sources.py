"""Source configuration and the HTTP client's auth kinds, against the sample server on loopback."""

from __future__ import annotations

import base64

import pytest

from workctl.errors import ExitCode, Invalid
from workctl.sources.client import SourceClient
from workctl.sources.config import load_source
from workctl.sources.sample_server import Faults, SampleServer

SECRET = "s3cr3t-sentinel-value"


def client_for(server, **settings):
    return SourceClient(load_source("crm", {"sources": {"crm": {"base_url": f"{server.url}/crm", **settings}}}),
                        sleep=lambda s: None)


@pytest.mark.parametrize("settings, check", [
    ({"auth": "bearer", "token_env": "CRM_SECRET"},
     lambda e: e["headers"]["Authorization"] == f"Bearer {SECRET}"),
    ({"auth": "header", "token_env": "CRM_SECRET", "auth_header": "X-Api-Key"},
     lambda e: e["headers"]["X-Api-Key"] == SECRET),
    ({"auth": "query", "token_env": "CRM_SECRET", "auth_param": "key"},
     lambda e: f"key={SECRET}" in e["path"]),
    ({"auth": "basic", "token_env": "CRM_SECRET", "username_env": "CRM_USER"},
     lambda e: e["headers"]["Authorization"] == "Basic " + base64.b64encode(f"bob:{SECRET}".encode()).decode()),
])
def test_each_auth_kind_sends_the_secret_from_the_environment(monkeypatch, settings, check):
    monkeypatch.setenv("CRM_SECRET", SECRET)
    monkeypatch.setenv("CRM_USER", "bob")
    with SampleServer() as server:
        with client_for(server, **settings) as client:
            outcomes = client.fetch_batch([1, 2])
        assert [o.ok for o in outcomes] == [True, True]
        assert check(server.log.entries[0])


def test_a_query_secret_is_redacted_from_errors(monkeypatch):
    monkeypatch.setenv("CRM_SECRET", SECRET)
    with SampleServer(faults=Faults(fail_rate=1.0)) as server:
        with client_for(server, auth="query", token_env="CRM_SECRET", max_attempts=2, bulk_path="") as client:
            outcome = client.fetch_user(1)
    assert outcome.error_class == "server_error"
    assert SECRET not in outcome.error and "HTTP 500" in outcome.error


def test_connection_errors_are_redacted_too(monkeypatch):
    monkeypatch.setenv("CRM_SECRET", SECRET)
    with SampleServer() as server:
        url = server.url
    config = load_source("crm", {"sources": {"crm": {"base_url": f"{url}/crm", "auth": "query",
                                                     "token_env": "CRM_SECRET", "max_attempts": 1,
                                                     "bulk_path": ""}}})
    with SourceClient(config, sleep=lambda s: None) as client:
        outcome = client.fetch_user(1)
    assert outcome.error_class == "connection" and SECRET not in outcome.error


def test_field_map_renames_external_fields():
    with SampleServer() as server:
        with client_for(server, field_map={"company": "employer"}) as client:
            outcome = client.fetch_user(3)
    assert outcome.data["employer"] == "Initech" and "company" not in outcome.data


def test_environment_overrides_the_base_url(monkeypatch):
    monkeypatch.setenv("WORKCTL_SOURCE_BILLING_URL", "http://127.0.0.1:1/billing")
    config = load_source("billing", {"sources": {"billing": {"base_url": "https://billing.example.com"}}})
    assert config.base_url == "http://127.0.0.1:1/billing"


@pytest.mark.parametrize("section, code, words", [
    ({}, "source_not_configured", "WORKCTL_SOURCE_CRM_URL"),
    ({"base_url": "ftp://x"}, "source_invalid", "http"),
    ({"base_url": "http://x", "auth": "magic"}, "source_invalid", "auth must be one of"),
    ({"base_url": "http://x", "timeout": -1}, "source_invalid", "timeout"),
    ({"base_url": "http://x", "concurrency": 0}, "source_invalid", "concurrency"),
    ({"base_url": "http://x", "field_map": {"a": "b; DROP TABLE users"}}, "source_invalid", "field_map"),
    ({"base_url": "http://x", "colour": "blue"}, "source_invalid", "colour"),
])
def test_bad_source_config_is_refused_with_its_name(monkeypatch, section, code, words):
    monkeypatch.delenv("WORKCTL_SOURCE_CRM_URL", raising=False)
    raw = {"sources": {"crm": section}} if section else {}
    with pytest.raises(Invalid) as caught:
        load_source("crm", raw)
    assert caught.value.code == code and words in caught.value.message
    assert caught.value.exit_code == ExitCode.INVALID


def test_missing_secret_names_the_variable_not_a_value(monkeypatch):
    monkeypatch.delenv("CRM_SECRET", raising=False)
    config = load_source("crm", {"sources": {"crm": {"base_url": "http://x", "auth": "bearer",
                                                     "token_env": "CRM_SECRET"}}})
    with pytest.raises(Invalid) as caught:
        config.secret()
    assert caught.value.code == "secret_missing" and "CRM_SECRET" in caught.value.message


def test_a_plain_http_source_loads_no_ca_bundle_and_would_refuse_any_tls_peer():
    """Loading the CA bundle costs about 0.25 s per sync run; an http source never does TLS, so its
    transport gets a context with no CA at all, still verifying: an https peer would fail closed."""
    import ssl

    from workctl.sources.client import _tls_for

    assert _tls_for("https://crm.example/api") is True  # the default: the CA bundle, verified
    context = _tls_for("http://127.0.0.1:8080/crm")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.cert_store_stats()["x509_ca"] == 0
