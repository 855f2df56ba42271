"""Hostile sources: everything from outside is bounded, and every failure is a classified per-user error.

Through the real ``SourceClient`` against the real sample server on 127.0.0.1 in its hostile modes
(``Faults.hostile``), no mocked transport. Backoff waits go to an injected sleeper (recorded, not
slept); only the drip tests spend real time, as little as the deadline they check.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import threading
import time
from datetime import datetime, timezone
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import make_users, run
from workctl import Workctl, strictjson
from workctl.config import Config
from workctl.errors import ExitCode, Invalid
from workctl.sources.check import check_source, list_sources
from workctl.sources.client import TRANSPORT_CLASSES, Redactor, SourceClient
from workctl.sources.config import load_source, mask_url, mask_urls
from workctl.sources.sample_server import Faults, SampleServer, gzip_bomb
from workctl.agents.sync import Syncer, SyncOptions

MiB = 1024 * 1024
BULK, PER_USER = "/users?ids={ids}", ""


def client_for(server, *, sleeps=None, **settings):
    config = load_source("crm", {"sources": {"crm": {"base_url": f"{server.url}/crm", **settings}}})
    return SourceClient(config, sleep=(sleeps.append if sleeps is not None else lambda s: None), rng=lambda: 0.5)


def users_emails(db):
    conn = sqlite3.connect(db)
    rows = dict(conn.execute("SELECT id, email FROM users"))
    conn.close()
    return rows


# -- each hostile answer ends in a classified failure, and the next fetch succeeds ----------------------
CONTENT_CASES = [
    ("redirect", "redirect", "HTTP 302 redirect"),
    ("huge_int", "bad_response", "integer out of range"),
    ("big_int", "bad_response", "integer out of range"),
    ("huge_float", "bad_response", "not a finite float"),
    ("nan", "bad_response", "NaN is not allowed"),
    ("deep", "bad_response", "nested deeper than 64 levels"),
    ("bad_utf8", "bad_response", "not valid UTF-8"),
    ("gzip_bomb", "too_large", "larger than max_body_bytes"),
    ("huge_body", "too_large", "larger than max_body_bytes"),
]


@pytest.mark.parametrize("bulk_path", [BULK, PER_USER], ids=["bulk", "per-user"])
@pytest.mark.parametrize("mode, error_class, words", CONTENT_CASES, ids=[c[0] for c in CONTENT_CASES])
def test_a_hostile_answer_is_a_classified_failure_and_the_next_fetch_succeeds(mode, error_class, words, bulk_path):
    with SampleServer(faults=Faults(hostile=mode, bomb_bytes=32 * MiB)) as server:
        with client_for(server, bulk_path=bulk_path, max_body_bytes=1 * MiB, max_attempts=3) as client:
            outcomes = client.fetch_batch([1, 2])
            requests = len(server.log)
            server.faults.hostile = None  # the source behaves again
            after = client.fetch_batch([1, 2])
    assert [(o.data, o.error_class) for o in outcomes] == [(None, error_class)] * 2
    assert all(words in o.error for o in outcomes), outcomes[0].error
    assert error_class not in TRANSPORT_CLASSES  # the source answered: not an outage
    assert "login@sso" not in outcomes[0].error and "\\xff" not in outcomes[0].error  # no body content
    assert requests == (1 if bulk_path else 2)  # not retried, and a redirect is not followed
    assert [o.ok for o in after] == [True, True]
    assert after[0].data["email"] == "user1@example.com"


def test_a_body_announced_larger_than_the_cap_is_refused_without_reading_it():
    with SampleServer() as server:
        with client_for(server, max_body_bytes=1024) as client:
            outcomes = client.fetch_batch(list(range(1, 51)))  # one bulk answer of ~6 KB
    assert {o.error_class for o in outcomes} == {"too_large"}
    assert "(Content-Length), more than max_body_bytes (1024)" in outcomes[0].error


def test_a_redirect_names_where_it_pointed_with_the_query_masked():
    with SampleServer(faults=Faults(hostile="redirect")) as server:
        with client_for(server) as client:
            outcome = client.fetch_user(1)
    assert outcome.error_class == "redirect"
    assert "https://sso.example.com/login?next=***" in outcome.error and "base_url" in outcome.error


# -- bounded memory: a gzip bomb stops at the cap -------------------------------------------------------
class PeakRss:
    """Peak resident memory while the block runs, minus the resident memory before it (bytes).

    Linux's VmHWM, reset through /proc/self/clear_refs; where that is not allowed, VmRSS sampled every
    2 ms (a growth to hundreds of MB lasts far longer than that)."""

    def __enter__(self):
        self.before = self._status("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.sampler = None
        except OSError:
            self.peak, self.done = self.before, threading.Event()
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def __exit__(self, *exc):
        if self.sampler is None:
            self.peak = self._status("VmHWM")
        else:
            self.done.set()
            self.sampler.join()
        self.growth = self.peak - self.before

    def _sample(self):
        while not self.done.wait(0.002):
            self.peak = max(self.peak, self._status("VmRSS"))

    @staticmethod
    def _status(key):
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        pytest.skip(f"/proc/self/status has no {key}")


@pytest.mark.parametrize("bulk_path", [BULK, PER_USER], ids=["bulk", "per-user"])
def test_a_gzip_bomb_is_cut_off_at_the_cap_with_bounded_memory(bulk_path):
    cap, inflated = 4 * MiB, 256 * MiB
    bomb = gzip_bomb(inflated)  # built (and cached) before measuring: the server lives in this process
    assert len(bomb) < inflated // 500
    with SampleServer(faults=Faults(hostile="gzip_bomb", bomb_bytes=inflated)) as server:
        with client_for(server, bulk_path=bulk_path, max_body_bytes=cap) as client:
            client.fetch_user(1)  # warm up: connection pool, code paths
            with PeakRss() as rss:
                outcomes = client.fetch_batch([1, 2])
    assert {o.error_class for o in outcomes} == {"too_large"}
    # Two users in parallel (per-user mode) each hold at most one cap's worth, plus slack for the rest.
    assert rss.growth < 2 * cap + 16 * MiB, f"RSS grew by {rss.growth / MiB:.1f} MiB"


# -- bounded time: a source that drips is cut off at the deadline --------------------------------------
@pytest.mark.parametrize("mode", ["drip_body", "drip_headers"])
def test_a_dripping_source_is_cut_off_at_the_request_deadline(mode):
    timeout, interval = 0.8, 0.2  # each byte arrives well inside a per-read timeout: only a deadline cuts it
    with SampleServer(faults=Faults(hostile=mode, drip_interval=interval)) as server:
        with client_for(server, bulk_path=PER_USER, timeout=timeout, max_attempts=1) as client:
            assert client.deadline_backend  # else a header drip would outlast the deadline
            result: dict = {}

            def fetch():
                started = time.monotonic()
                result["outcome"] = client.fetch_user(1)
                result["seconds"] = time.monotonic() - started

            worker = threading.Thread(target=fetch, daemon=True)
            worker.start()
            worker.join(timeout=10)  # a regression fails here instead of dripping for minutes
            assert not worker.is_alive(), "the request outlived its deadline by far"
            server.faults.hostile = None
            after = client.fetch_user(2)
    assert result["outcome"].error_class == "timeout" and "timeout" in TRANSPORT_CLASSES
    assert timeout - 0.05 <= result["seconds"] < timeout + 0.4, result["seconds"]
    assert after.ok


# -- Retry-After: digits or a future date; anything else is absent --------------------------------------
WALL = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("value, waited", [
    ("\u00b2", 0.5),                               # a Unicode digit: isdigit() is True, float() fails
    ("9" * 5000, 0.5),                             # 5,000 digits
    ("99999999999", 0.5),                          # 11 digits: beyond any sane wait
    ("-1", 0.5),
    ("1e9", 0.5),
    ("Mon, 01 Jan 1900 00:00:00 GMT", 0.5),        # a date long past says nothing
    ("soon", 0.5),
    ("7", 7.0),                                    # the well-formed forms still count
    ("Mon, 01 Jun 2026 12:00:30 GMT", 30.0),
], ids=["superscript-two", "5000-digits", "11-digits", "minus-one", "1e9", "year-1900", "word", "seconds", "date"])
def test_a_garbage_retry_after_is_treated_as_absent(value, waited):
    sleeps: list[float] = []
    with SampleServer(faults=Faults(throttle_first=1, retry_after=value)) as server:
        config = load_source("crm", {"sources": {"crm": {"base_url": f"{server.url}/crm", "max_attempts": 2}}})
        with SourceClient(config, sleep=sleeps.append, rng=lambda: 0.5, wall=lambda: WALL) as client:
            outcomes = client.fetch_batch([1, 2])
    assert [o.ok for o in outcomes] == [True, True]
    assert sleeps == [waited]  # absent: full-jitter backoff, 0.5 * backoff_base with rng() = 0.5


# -- through sync: the run finishes, the batch counts an attempt, nothing is applied --------------------
@pytest.mark.parametrize("mode, error_class", [("redirect", "redirect"), ("huge_int", "bad_response"),
                                               ("deep", "bad_response"), ("nan", "bad_response")])
def test_sync_against_a_hostile_source_applies_nothing_and_counts_the_attempt(tmp_path, mode, error_class):
    db = tmp_path / "w.db"
    make_users(db, 4)
    with SampleServer(faults=Faults(hostile=mode)) as server:
        config = Config(raw={"sources": {"crm": {"base_url": f"{server.url}/crm"}}})
        with Workctl(db, config=config) as wc:
            order_id = wc.propose("user.data.sync", {"source": "crm", "user_ids": [1, 2, 3, 4], "fields": ["email"],
                                                     "min_success_ratio": 0})["order"]["id"]
            syncer = Syncer(wc, SyncOptions(agent="hostile-test", approve=True),
                            client_factory=lambda cfg, on_wait: SourceClient(cfg, sleep=lambda s: None,
                                                                             on_wait=on_wait),
                            heartbeat_every=30)
            report = syncer.run().to_dict()
            item = wc.show(order_id)["items"][0]
    assert report["users"]["failed_by_class"] == {error_class: 4} and report["users"]["synced"] == 0
    assert item["attempts"] == 1
    assert set(users_emails(db).values()) == {None}  # the 302's "login@sso.example.com" was never applied


def test_the_cli_sync_exits_7_not_1_and_releases_the_batch_as_a_counted_attempt(tmp_path):
    db = tmp_path / "w.db"
    make_users(db, 3)
    with SampleServer(faults=Faults(hostile="deep")) as server:
        config = tmp_path / "workctl.toml"
        config.write_text(f'[sources.crm]\nbase_url = "{server.url}/crm"\nmax_attempts = 1\n')
        out = run(db, "--config", str(config), "sync", "--source", "crm", "--users", "1-3", "--fields", "email",
                  "--json")
    assert out.exit_code == ExitCode.REMOTE, out.stdout + out.stderr
    assert out.json["users"]["failed_by_class"] == {"bad_response": 3}
    assert out.json["items"]["released"] == 1 and "attempt 1/" in out.json["messages"][0]
    assert set(users_emails(db).values()) == {None}


# -- secrets -----------------------------------------------------------------------------------------------
TOKEN = "tok-5f1e9a7c"


@pytest.mark.parametrize("value, words", [
    (TOKEN + "\n", "a newline"), (TOKEN + "\r\n", "a carriage return"), (TOKEN + "\x7f", "a control character"),
    ("\t" + TOKEN, "a tab"), (TOKEN + "\x1b", "a control character"), (TOKEN + "\u0085", "a control character"),
])
def test_a_secret_with_a_control_character_is_refused_at_config_load(monkeypatch, value, words):
    monkeypatch.setenv("CRM_TOKEN", value)
    config = load_source("crm", {"sources": {"crm": {"base_url": "http://127.0.0.1:9/crm", "auth": "bearer",
                                                     "token_env": "CRM_TOKEN"}}})
    with pytest.raises(Invalid) as caught:
        SourceClient(config)
    assert caught.value.code == "secret_invalid" and caught.value.exit_code == ExitCode.INVALID
    assert "CRM_TOKEN" in caught.value.message and words in caught.value.message
    assert TOKEN not in caught.value.message


@pytest.mark.parametrize("username, words", [("bob\n", "a newline"), ("bob:admin", "contains ':'")])
def test_a_basic_auth_username_is_checked_the_same_way(monkeypatch, username, words):
    monkeypatch.setenv("CRM_TOKEN", TOKEN)
    monkeypatch.setenv("CRM_USER", username)
    config = load_source("crm", {"sources": {"crm": {"base_url": "http://127.0.0.1:9/crm", "auth": "basic",
                                                     "token_env": "CRM_TOKEN", "username_env": "CRM_USER"}}})
    with pytest.raises(Invalid) as caught:
        SourceClient(config)
    assert "CRM_USER" in caught.value.message and words in caught.value.message and "bob" not in caught.value.message


def test_a_non_ascii_header_secret_is_refused_but_a_query_secret_may_be_any_text(monkeypatch):
    monkeypatch.setenv("CRM_TOKEN", "caf\u00e9-" + TOKEN)
    section = {"base_url": "http://127.0.0.1:9/crm", "token_env": "CRM_TOKEN"}
    with pytest.raises(Invalid) as caught:
        load_source("crm", {"sources": {"crm": {**section, "auth": "bearer"}}}).secret()
    assert "non-ASCII" in caught.value.message and TOKEN not in caught.value.message
    assert load_source("crm", {"sources": {"crm": {**section, "auth": "query"}}}).secret() == "caf\u00e9-" + TOKEN


def test_a_newline_terminated_token_never_reaches_output_or_the_database(tmp_path, monkeypatch):
    monkeypatch.setenv("CRM_TOKEN", TOKEN + "\n")
    db = tmp_path / "w.db"
    make_users(db, 3)
    with SampleServer() as server:
        config = tmp_path / "workctl.toml"
        config.write_text(f'[sources.crm]\nbase_url = "{server.url}/crm"\nauth = "bearer"\ntoken_env = "CRM_TOKEN"\n')
        outputs = [run(db, "--config", str(config), *args) for args in (
            ["sync", "--source", "crm", "--users", "1-3", "--fields", "email", "--json"],
            ["sources", "check", "crm", "--json"], ["sources", "list", "--json"])]
        assert len(server.log) == 0  # refused before any request
    for out in outputs[:2]:
        assert out.exit_code == ExitCode.INVALID and out.json["error"]["code"] == "secret_invalid", out.stdout
    for out in outputs:
        assert TOKEN not in out.stdout + out.stderr
    assert TOKEN.encode() not in db.read_bytes()


SECRET = "s3cr/t+k=y \"q\" \\ caf\u00e9"


SECRET_FORMS = {
    "raw": SECRET,
    "repr": repr(SECRET)[1:-1],
    "bytes-repr": repr(SECRET.encode())[2:-1],  # how h11 quotes a header value it refuses
    "quote": quote(SECRET, safe=""),
    "quote-path": quote(SECRET),
    "quote-plus": quote_plus(SECRET),
    "quote-lower-hex": re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(SECRET, safe="")),
    "json": json.dumps(SECRET)[1:-1],
    "json-unicode": json.dumps(SECRET, ensure_ascii=False)[1:-1],
    "basic-base64": base64.b64encode(f"bob:{SECRET}".encode()).decode(),
}


@pytest.mark.parametrize("name", list(SECRET_FORMS))
def test_the_redactor_covers_every_form_of_the_secret(name):
    form = SECRET_FORMS[name]
    assert name == "raw" or SECRET not in form  # each case is a form the raw match alone would miss
    redact = Redactor([SECRET], basic_user="bob")
    assert redact(f"error: Illegal header value {form} (after 2 attempts)") == \
        "error: Illegal header value *** (after 2 attempts)"


def test_mask_url_hides_userinfo_and_every_query_value():
    assert mask_url("https://user:pw@host/p?key=abc&x=1") == "https://***@host/p?key=***&x=***"
    assert mask_url("https://host/users?ids={ids}&api_key=k") == "https://host/users?ids={ids}&api_key=***"
    assert mask_url("https://host/p") == "https://host/p"


def test_sources_list_and_check_show_masked_urls():
    with SampleServer() as server:
        host = server.url.removeprefix("http://")
        listed = list_sources({"sources": {"crm": {"base_url": f"http://agent:pa55word@{host}/crm?key=k3y-value"}}})
        report = check_source("crm", {"sources": {"crm": {"base_url": f"http://agent:pa55word@{host}/crm"}}})
    shown = json.dumps([listed, report])
    assert "pa55word" not in shown and "k3y-value" not in shown and "agent" not in shown
    assert listed[0]["base_url"] == f"http://***@{host}/crm?key=***"
    assert report["base_url"] == f"http://***@{host}/crm" and report["status"] == "ok"


def test_urls_inside_an_error_message_are_masked():
    message = "ConnectError: cannot reach 'https://agent:pa55word@h.example/x?key=k3y' (from http://h/?a=b)"
    assert mask_urls(message) == "ConnectError: cannot reach 'https://***@h.example/x?key=***' (from http://h/?a=***)"


# -- nothing a response causes escapes fetch_batch; Ctrl-C still does ----------------------------------
def interrupted(record, order_map=None):
    raise KeyboardInterrupt


@pytest.mark.parametrize("bulk_path", [BULK, PER_USER], ids=["bulk", "per-user"])
def test_an_unexpected_error_handling_a_response_is_classified_not_raised(monkeypatch, bulk_path):
    with SampleServer() as server:
        with client_for(server, bulk_path=bulk_path) as client:
            monkeypatch.setattr(client, "_mapped", lambda record, order_map=None: record["no such field"])
            outcomes = client.fetch_batch([1, 2])
            monkeypatch.setattr(client, "_mapped", interrupted)
            with pytest.raises(KeyboardInterrupt):
                client.fetch_batch([1, 2])
    assert [o.error_class for o in outcomes] == ["bad_response"] * 2
    assert "KeyError" in outcomes[0].error


@pytest.mark.parametrize("setting, value", [("timeout", 0), ("timeout", float("inf")), ("timeout", float("nan")),
                                            ("backoff_cap", float("nan")), ("retry_after_cap", float("inf"))])
def test_a_source_needs_a_finite_timeout_and_finite_waits(setting, value):
    with pytest.raises(Invalid) as caught:
        load_source("crm", {"sources": {"crm": {"base_url": "http://x", setting: value}}})
    assert setting in caught.value.message and caught.value.code == "source_invalid"


def test_max_body_bytes_is_range_checked():
    for value in (0, 1023, 2**31, "32MiB", True):
        with pytest.raises(Invalid) as caught:
            load_source("crm", {"sources": {"crm": {"base_url": "http://x", "max_body_bytes": value}}})
        assert "max_body_bytes" in caught.value.message and caught.value.code == "source_invalid"
    assert load_source("crm", {"sources": {"crm": {"base_url": "http://x"}}}).max_body_bytes == 32 * MiB


# -- the strict reader itself -----------------------------------------------------------------------------
@pytest.mark.parametrize("data, kind, path", [
    (b'{"a": NaN}', "constant", "a"),
    (b'{"a": [1, -Infinity]}', "constant", "a.1"),
    (b'{"synced_users": [{}, {}, {}, {"data": {"email": 99999999999999999999}}]}', "number",
     "synced_users.3.data.email"),
    (b'{"x": ' + b"7" * 5000 + b"}", "number", "x"),
    (b"[-9223372036854775809]", "number", "0"),
    (b'{"mrr": 1e400}', "number", "mrr"),
    (b'{"odd key!": [NaN]}', "constant", '["odd key!"].0'),
    (b'{"a": "\xff"}', "encoding", "byte 7"),
    (b'{"a": "\\ud800"}', "encoding", "a"),
    (b'{"a": ', "syntax", "line 1 column 7"),
    (b"[" * 65 + b"]" * 65, "depth", "line 1 column 65"),
])
def test_strictjson_refuses_with_the_reason_and_where(data, kind, path):
    with pytest.raises(strictjson.StrictJsonError) as caught:
        strictjson.loads(data, what="result")
    assert (caught.value.kind, caught.value.path) == (kind, path)
    assert isinstance(caught.value, ValueError) and str(caught.value).startswith("result: ")


@pytest.mark.parametrize("data", [
    b"[9223372036854775807, -9223372036854775808, 1.5e300, 12345678901234567]",
    b"[" * 64 + b"]" * 64,
    json.dumps({"a": "[" * 500 + "\\\"" + "{" * 100}).encode(),  # brackets and escaped quotes inside strings
    json.dumps({"emoji": "\U0001f600", "text": "caf\u00e9"}).encode(),  # a surrogate pair is fine
])
def test_strictjson_accepts_what_is_within_the_rules(data):
    assert strictjson.loads(data) == json.loads(data)


def nesting(value) -> int:
    if isinstance(value, dict):
        return 1 + max((nesting(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((nesting(v) for v in value), default=0)
    return 0


# Strings full of what could fool a bracket scan: brackets, quotes, backslashes, \u escapes.
_TRICKY = st.text(alphabet='[]{}"\\/ab\u00e9\U0001f600', max_size=8)
_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _TRICKY,
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
                       max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(value=_VALUES, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 1]))
def test_strictjson_depth_check_agrees_with_the_real_nesting(value, ensure_ascii, indent):
    document = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode()
    for max_depth in (1, 2, 3, 4):
        if nesting(value) <= max_depth:
            assert strictjson.loads(document, max_depth=max_depth) == value
        else:
            with pytest.raises(strictjson.StrictJsonError) as caught:
                strictjson.loads(document, max_depth=max_depth)
            assert caught.value.kind == "depth"


def test_strictjson_refuses_too_large_input_before_reading_it():
    with pytest.raises(strictjson.StrictJsonError) as caught:
        strictjson.loads(b"[" + b"1," * 600 + b"1]", max_bytes=1024)
    assert caught.value.kind == "size" and "1 KiB" in caught.value.reason


def test_strictjson_refuses_100000_deep_nesting_quickly_without_recursing():
    for document in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                     b"[1," * 100_000, b"[" * 100_000):
        started = time.perf_counter()
        with pytest.raises(strictjson.StrictJsonError) as caught:
            strictjson.loads(document)
        assert caught.value.kind == "depth"
        assert time.perf_counter() - started < 0.5


def test_strictjson_check_validates_parsed_values_the_same_way():
    assert strictjson.check({"a": [1, 2.5, None, True, "x", {"b": []}]}) is None
    cases = [({"a": [1, {"b": float("nan")}]}, "number", "a.1.b"), ([2**63], "number", "0"),
             ({1: "x"}, "type", "$"), ({"a": {1, 2}}, "type", "a"), (["ok", "\ud800"], "encoding", "1")]
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    cases.append((deep, "depth", ".".join(["0"] * 64)))
    for value, kind, path in cases:
        with pytest.raises(strictjson.StrictJsonError) as caught:
            strictjson.check(value)
        assert (caught.value.kind, caught.value.path) == (kind, path)


def test_strictjson_costs_little_over_json_loads_on_a_normal_document():
    from workctl.sources.sample_server import sample_user

    users = [{**sample_user("crm", i), **sample_user("billing", i)} for i in range(1, 5000)]
    document = json.dumps({"data": users, "missing": []}).encode()
    assert len(document) > 1_000_000

    def best(parse):
        times = []
        for _ in range(7):
            started = time.perf_counter()
            parse(document)
            times.append(time.perf_counter() - started)
        return min(times)

    assert strictjson.loads(document) == json.loads(document)
    # Measured about 1.3x (see the module docstring); 3x leaves room for a busy machine, not for a
    # Python-level scan of every byte (10x and more).
    assert best(strictjson.loads) < 3 * best(json.loads)
