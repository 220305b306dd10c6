"""Schemathesis hooks of .ci/schemathesis.sh (SCHEMATHESIS_HOOKS).

A fuzzer left alone never places an order: the run's customer has an empty
cart, so every POST /v1/orders would be a 422 and the response checks would
never see an invoice or a failed payment's body. Before each order whose
body is an object, these hooks do what a real client does: the order is for
the customer of the run's token, paid alternately with a token the sandbox
gateway accepts and one it declines, and the cart is filled with a product
whose stock was topped up once. Schemathesis re-validates a case a
`before_call` hook edited, so a negative case made valid is checked as a
valid one. Every order's status is counted into SMARTMART_ST_COUNTS, which
the script reads to prove that orders reached 201 and 402.
"""

import json
import os
import urllib.request
from collections import Counter

import schemathesis

URL = os.environ["SMARTMART_ST_URL"]
ADMIN_KEY = os.environ["SMARTMART_ST_ADMIN_KEY"]
WEB_KEY = os.environ["SMARTMART_ST_WEB_KEY"]
CUSTOMER = os.environ["SMARTMART_ST_CUSTOMER"]
TOKEN = os.environ["SMARTMART_ST_TOKEN"]
COUNTS_PATH = os.environ["SMARTMART_ST_COUNTS"]
# An accessory every demo warehouse stocks; topped up so that stock never
# runs out however many orders the run confirms.
SKU = "HDMI-2M"
WAREHOUSES = ["WH-BLR", "WH-BOM", "WH-DEL", "WH-MAA"]
PAYMENT_TOKENS = ["tok_ok", "tok_decline"]

counts = Counter()
state = {"orders": 0, "stocked": False}


def send(method, path, headers, body):
    request = urllib.request.Request(
        URL + path,
        method=method,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def is_order(case):
    return case.method.upper() == "POST" and case.path == "/v1/orders"


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if not is_order(case) or not isinstance(case.body, dict):
        return
    if not state["stocked"]:
        for warehouse in WAREHOUSES:
            send("PUT", f"/v1/admin/stock/{warehouse}/{SKU}", {"Authorization": f"Bearer {ADMIN_KEY}"},
                 {"on_hand": 1_000_000})
        state["stocked"] = True
    send("PUT", f"/v1/carts/{CUSTOMER}", {"Authorization": f"Bearer {WEB_KEY}", "X-Customer-Token": TOKEN},
         {"items": [{"sku": SKU, "quantity": 1}]})
    case.body["customer_id"] = CUSTOMER
    case.body["payment"] = {"token": PAYMENT_TOKENS[state["orders"] % len(PAYMENT_TOKENS)]}
    state["orders"] += 1


@schemathesis.hook
def after_call(ctx, case, response):
    if is_order(case):
        counts[str(response.status_code)] += 1
        with open(COUNTS_PATH, "w") as out:
            json.dump(counts, out)
