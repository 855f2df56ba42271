"""Alerts as Standard Webhooks: order.failed, order.held, order.cancelled, run.failed next to order.applied,
each verified by the ``standardwebhooks`` package on a receiver on 127.0.0.1; one overall deadline per
delivery (a trickling receiver cannot hold approve), one sender per row, and Ctrl-C during the deliveries
of a committed approve."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook as Verifier

from workctl.core import outbox
from workctl.sources.sample_server import SampleServer
from helpers import as_on_a_terminal, child_env, count, make_users, query, run, run_process, workctl_cmd

RAW_SECRET = "raw-text-secret-7c1d"  # used as raw text
WHSEC_SECRET = "whsec_" + base64.b64encode(b"sixteen-byte-key-for-hmac-0001").decode()


class Receiver:
    """A webhook endpoint: verifies every delivery with the standardwebhooks package and records it.
    ``mode``: "ok" answers at once, "slow" after ``delay`` seconds, "trickle" sends its answer one byte at a
    time (every ``delay`` seconds)."""

    def __init__(self, mode: str = "ok", delay: float = 0.0):
        self.mode, self.delay = mode, delay
        self.deliveries: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                secret = WHSEC_SECRET if self.path == "/whsec" else RAW_SECRET.encode()
                try:
                    Verifier(secret).verify(body, headers)
                    verified = True
                except Exception:  # noqa: BLE001 — recorded as unverified
                    verified = False
                with receiver.lock:
                    receiver.deliveries.append({"path": self.path, "body": json.loads(body), "headers": headers,
                                                "verified": verified, "at": time.monotonic()})
                try:
                    if receiver.mode == "slow":
                        time.sleep(receiver.delay)
                    if receiver.mode == "trickle":
                        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(receiver.delay)
                        return
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def types(self, path: str | None = None) -> list[str]:
        return [d["body"]["type"] for d in self.deliveries if path is None or d["path"] == path]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def hooks_config(tmp_path: Path, receiver: Receiver, *, source_url: str | None = None, timeout: float = 5,
                 extra: str = "") -> Path:
    events = '["order.applied", "order.failed", "order.held", "order.cancelled", "run.failed"]'
    text = (f'[[webhooks]]\nname = "raw"\nurl = "{receiver.url}/raw"\nsecret_env = "RAW_SECRET"\nevents = {events}\n'
            f'timeout = {timeout}\nbackoff_seconds = 0\n'
            f'[[webhooks]]\nname = "whsec"\nurl = "{receiver.url}/whsec"\nsecret_env = "WHSEC_SECRET"\n'
            f'events = {events}\ntimeout = {timeout}\nbackoff_seconds = 0\n{extra}')
    if source_url:
        text += f'[sources.crm]\nbase_url = "{source_url}/crm"\n'
    path = tmp_path / "workctl.toml"
    path.write_text(text)
    return path


def env() -> dict[str, str]:
    return child_env(RAW_SECRET=RAW_SECRET, WHSEC_SECRET=WHSEC_SECRET)


def test_every_alert_is_signed_per_standard_webhooks_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("RAW_SECRET", RAW_SECRET)
    monkeypatch.setenv("WHSEC_SECRET", WHSEC_SECRET)
    db = tmp_path / "w.db"
    make_users(db, 6, filled=True)
    with Receiver() as receiver, SampleServer() as server:
        config = hooks_config(tmp_path, receiver, source_url=server.url, extra="[approve]\nmax_changed_users = 2\n")
        cfg = ["--config", str(config)]
        # order.held: a rule holds the cron line's auto-approve.
        held = run_process(db, *cfg, "sync", "--source", "crm", "--users", "1-6", "--fields", "email", "--approve",
                           "--json", env=env())
        assert held.exit_code == 6, held.stderr
        held_order = json.loads(held.stdout)["orders"][0]
        # order.applied: a person approves it.
        assert run_process(db, *cfg, "approve", held_order, env=env()).exit_code == 0
        # order.failed and run.failed: a task whose only attempt fails.
        failing = run(db, "propose", "task.batch", "--payload", '{"tasks": [1], "max_attempts": 1}', "--json")
        ran = run_process(db, *cfg, "run", failing.json["order"]["id"], "--exec", "exit 4", "--json", env=env())
        assert ran.exit_code == 7
        # order.cancelled
        doomed = run(db, "propose", "task.batch", "--payload", '{"tasks": [1]}', "--json").json["order"]["id"]
        assert run_process(db, *cfg, "cancel", doomed, "--reason", "not needed", env=env()).exit_code == 0
        time.sleep(0.1)
        deliveries = list(receiver.deliveries)
    assert deliveries and all(d["verified"] for d in deliveries), [d for d in deliveries if not d["verified"]]
    for path in ("/raw", "/whsec"):
        assert sorted(receiver.types(path)) == sorted(["order.held", "order.applied", "order.failed", "run.failed",
                                                       "order.cancelled"])
    by_type = {d["body"]["type"]: d["body"] for d in deliveries if d["path"] == "/raw"}
    assert by_type["order.held"]["data"]["rule"] == "max_changed_users"
    assert (by_type["order.held"]["data"]["limit"], by_type["order.held"]["data"]["actual"]) == (2, 6)
    assert by_type["order.failed"]["data"]["state"] == "failed"
    assert "workctl retry --order" in by_type["order.failed"]["data"]["next"]
    assert by_type["run.failed"]["data"]["error"]["code"] == "run_incomplete"
    assert by_type["run.failed"]["data"]["report"]["items"]["released"] == 1
    assert by_type["order.cancelled"]["data"] | {"order_id": doomed} == by_type["order.cancelled"]["data"]
    assert all(set(d["body"]) == {"type", "timestamp", "data"} for d in deliveries)
    # A message id is stable per row and distinct between rows.
    assert len({d["headers"]["webhook-id"] for d in deliveries}) == len(deliveries)
    dump = "\n".join(str(r) for r in query(db, "SELECT * FROM outbox")) + json.dumps(query(db, "SELECT * FROM events"))
    assert RAW_SECRET not in dump and WHSEC_SECRET not in dump


def test_our_verify_agrees_with_the_standardwebhooks_signer():
    """The other direction: a signature made by the standardwebhooks package verifies with ours."""
    from datetime import datetime, timezone

    body = b'{"type":"order.applied","timestamp":"t","data":{}}'
    signer = Verifier(WHSEC_SECRET)
    now = datetime.now(timezone.utc)
    signature = signer.sign("msg_1", now, body.decode())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
    assert outbox.verify(WHSEC_SECRET, headers, body)
    assert not outbox.verify(WHSEC_SECRET, {**headers, "webhook-timestamp": str(int(now.timestamp()) - 3600)}, body)
    assert outbox.sign(WHSEC_SECRET, "msg_1", int(now.timestamp()), body) == signature


def _submitted_order(db: Path) -> str:
    order_id = run(db, "propose", "task.batch", "--payload", '{"tasks": [1]}', "--json").json["order"]["id"]
    assert run(db, "run", order_id, "--exec", "cat").exit_code == 0
    return order_id


def test_a_trickling_receiver_cannot_hold_approve_past_the_deadline(tmp_path):
    db = tmp_path / "w.db"
    order_id = _submitted_order(db)
    with Receiver(mode="trickle", delay=0.3) as receiver:  # a full answer would take ~12 s
        config = hooks_config(tmp_path, receiver, timeout=1)
        started = time.monotonic()
        out = run_process(db, "--config", str(config), "approve", order_id, "--json", env=env())
        elapsed = time.monotonic() - started
    assert out.exit_code == 0, out.stderr
    assert elapsed < 6, elapsed  # two deliveries of at most 1 s each, plus start-up
    document = json.loads(out.stdout)
    assert document["order"]["state"] == "completed" and document["webhooks"]["failed"] == 2
    assert {r[0] for r in query(db, "SELECT last_error FROM outbox")} == \
        {"timeout: no complete answer within the 1 s deadline"}


def test_two_senders_never_send_the_same_row_at_once(tmp_path):
    db = tmp_path / "w.db"
    order_id = _submitted_order(db)
    with Receiver(mode="slow", delay=1.0) as receiver:
        config = hooks_config(tmp_path, receiver, timeout=5)
        # Approve with the secrets unset: the apply commits with its two rows, whose first attempts fail
        # before any request (backoff 0: both are due again at once).
        queued = run(db, "--config", str(config), "approve", order_id, "--json",
                     env={"RAW_SECRET": "", "WHSEC_SECRET": ""})
        assert queued.exit_code == 0
        assert [r[0] for r in query(db, "SELECT state FROM outbox ORDER BY id")] == ["pending", "pending"]
        assert receiver.deliveries == []
        # The failed attempts set next_attempt_at to now (backoff 0): both rows are due. Two maintains race.
        argv = workctl_cmd(db, "--config", str(config), "maintain", "--json")
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                                  env=env()) for _ in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(d["path"] for d in receiver.deliveries) == ["/raw", "/whsec"]  # each row once
    sent = [json.loads(out)["webhooks"]["sent"] for out, _ in outs]
    assert sum(sent) == 2
    assert query(db, "SELECT state FROM outbox") == [("sent",), ("sent",)]


def test_ctrl_c_while_sending_leaves_the_rest_in_the_outbox_and_exits_0(tmp_path):
    db = tmp_path / "w.db"
    order_id = _submitted_order(db)
    with Receiver(mode="slow", delay=8) as receiver:
        config = hooks_config(tmp_path, receiver, timeout=20)
        proc = subprocess.Popen(workctl_cmd(db, "--config", str(config), "approve", order_id), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env(), preexec_fn=as_on_a_terminal)
        deadline = time.monotonic() + 30
        while not receiver.deliveries:  # the apply committed and the first delivery is in flight
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        # The row in flight is claimed for longer than its deadline (20 s): no other sender may take it
        # before this attempt has certainly ended (issue 12: two senders never send the same row at once).
        from datetime import datetime, timezone

        from workctl.clock import parse

        claimed_until = parse(query(db, "SELECT max(next_attempt_at) FROM outbox WHERE state = 'pending' "
                                        "AND next_attempt_at != ''")[0][0])
        assert (claimed_until - datetime.now(timezone.utc)).total_seconds() > 20
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"Order {order_id} is completed" in out
    assert "maintain" in err and "interrupted" in err
    assert query(db, "SELECT state FROM orders WHERE id = ?", (order_id,)) == [("completed",)]
    assert count(db, "SELECT count(*) FROM outbox WHERE state = 'pending'") == 2


@pytest.mark.parametrize("bad", ["order.deleted", "run.exploded"])
def test_an_unknown_event_name_is_refused(tmp_path, bad):
    db = tmp_path / "w.db"
    order_id = _submitted_order(db)
    config = tmp_path / "bad.toml"
    config.write_text(f'[[webhooks]]\nurl = "http://127.0.0.1:9/x"\nevents = ["{bad}"]\n')
    out = run(db, "--config", str(config), "approve", order_id, "--json")
    assert out.exit_code == 5 and out.json["error"]["code"] == "config_invalid"


def test_the_first_failure_in_a_new_store_is_alerted(tmp_path, monkeypatch):
    """No earlier command has looked at the alerts yet: the very first failed order is still reported."""
    db = tmp_path / "w.db"
    with Receiver() as receiver:
        config = hooks_config(tmp_path, receiver)
        order = run(db, "propose", "task.batch", "--payload", '{"tasks": [1], "max_attempts": 1}', "--json")
        item = json.loads(run_process(db, "checkout", "--json").stdout)["item"]
        released = run_process(db, "--config", str(config), "release", item["id"], "--error", "boom", "--json",
                               env={**env(), "WORKCTL_LEASE_TOKEN": item["lease_token"]})
        assert released.exit_code == 0 and json.loads(released.stdout)["order"]["state"] == "failed"
        time.sleep(0.1)
    assert receiver.types("/raw") == ["order.failed"] and all(d["verified"] for d in receiver.deliveries)
    assert receiver.deliveries[0]["body"]["data"]["order_id"] == order.json["order"]["id"]


def test_a_dead_lettered_order_is_alerted_and_keeps_every_run_at_exit_7(tmp_path):
    """order.failed covers dead-lettered orders too (maintain moves an exhausted failure there), and a run
    whose scope holds one exits 7 naming it, until an operator acts."""
    db = tmp_path / "w.db"
    with Receiver() as receiver:
        cfg = ("--config", str(hooks_config(tmp_path, receiver)))
        order_id = run(db, "propose", "task.batch", "--payload", '{"tasks": [1], "max_attempts": 1}',
                       "--json").json["order"]["id"]
        assert run_process(db, *cfg, "run", "--exec", "exit 3", "--json", env=env()).exit_code == 7
        swept = run_process(db, *cfg, "maintain", "--json", env=env())  # dead_letter_after_seconds = 0
        assert swept.exit_code == 0 and json.loads(swept.stdout)["items_dead_lettered"] == 1, swept.stderr
        assert query(db, "SELECT state FROM orders") == [("dead_lettered",)]
        later = run_process(db, *cfg, "run", "--exec", "cat", "--json", env=env())
        assert later.exit_code == 7, later.stderr
        error = json.loads(later.stdout)["error"]
        assert error["code"] == "order_failed" and f"{order_id} dead_lettered" in error["message"]
        assert f"workctl retry --order {order_id}" in error["message"]
    failed = [d["body"]["data"] for d in receiver.deliveries if d["path"] == "/raw" and d["body"]["type"] == "order.failed"]
    assert [(f["order_id"], f["state_before"], f["state"]) for f in failed] == [
        (order_id, "in_progress", "failed"), (order_id, "failed", "dead_lettered")]
    assert all(d["verified"] for d in receiver.deliveries)
