#!/usr/bin/env python3
"""Signed, distinct Stripe events for the webhook benchmark (bench/run.sh).

  webhook_events.py generate SECRET COUNT OUT_DIR
      Writes OUT_DIR/template.json: the shared customer.subscription.updated event (2025-03-31
      shape, ~3 KB) with @@EVT@@ for its id and @@SUB@@ for its subscription's id, and
      OUT_DIR/events.txt: COUNT lines "evt_id sub_id t signature", each signature the
      Stripe-Signature v1 of the template with those ids, at time t (now). wrk's Lua fills the
      template in, so every request is a distinct event with a valid signature and nothing big
      is held in memory. Signatures hold for Stripe's 300 s tolerance: generate just before use.

  webhook_events.py steady URL SECRET COUNT RATE
      Delivers COUNT more such events at RATE per second over one keep-alive connection, for
      the ingest-to-processed latency at a calm rate. Exits 1 if any is not answered 200.
"""

import hashlib
import hmac
import http.client
import json
import os
import sys
import time
import urllib.parse

SHARED_EVENT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "..", "shared", "stripe", "events", "customer.subscription.updated.json",
)


def template() -> str:
    with open(SHARED_EVENT, encoding="utf-8") as f:
        event = json.load(f)
    event["id"] = "@@EVT@@"
    subscription = event["data"]["object"]
    subscription["id"] = "@@SUB@@"
    for item in subscription["items"]["data"]:
        item["subscription"] = "@@SUB@@"
    return json.dumps(event, separators=(",", ":"))


def body(tmpl: str, evt: str, sub: str) -> str:
    return tmpl.replace("@@EVT@@", evt).replace("@@SUB@@", sub)


def sign(secret: str, t: int, payload: str) -> str:
    return hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()


def ids(prefix: str, n: int) -> tuple[str, str]:
    return f"evt_bench{prefix}{n:08d}", f"sub_bench{prefix}{n:08d}"


def generate(secret: str, count: int, out_dir: str) -> None:
    tmpl = template()
    with open(os.path.join(out_dir, "template.json"), "w", encoding="utf-8") as f:
        f.write(tmpl)
    t = int(time.time())
    with open(os.path.join(out_dir, "events.txt"), "w", encoding="utf-8") as f:
        for n in range(count):
            evt, sub = ids("w", n)
            f.write(f"{evt} {sub} {t} {sign(secret, t, body(tmpl, evt, sub))}\n")


def steady(url: str, secret: str, count: int, rate: float) -> None:
    tmpl = template()
    parsed = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    interval = 1.0 / rate
    next_at = time.monotonic()
    for n in range(count):
        evt, sub = ids("s", n)
        payload = body(tmpl, evt, sub)
        t = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Stripe-Signature": f"t={t},v1={sign(secret, t, payload)}",
        }
        connection.request("POST", parsed.path, payload.encode(), headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            sys.exit(f"steady delivery {n} answered {response.status}")
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))


def main() -> None:
    match sys.argv[1:]:
        case ["generate", secret, count, out_dir]:
            generate(secret, int(count), out_dir)
        case ["steady", url, secret, count, rate]:
            steady(url, secret, int(count), float(rate))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main()
