"""Locust load test by lab2prod: POST request bodies (image bytes or JSON) to a TorchServe model with its token.

Run it against any deployment (also distributed: one --master and several --worker processes):
    LAB2PROD_TOKEN=... LAB2PROD_IMAGES=requests locust -f locustfile.py --host http://HOST:PORT
Split traffic between model versions by weight (a canary), as a weighted router would:
    LAB2PROD_ROUTES='[{"path": "/predictions/model/1.0", "weight": 80, "label": "v1"},
                      {"path": "/predictions/model/2.0", "weight": 20, "label": "v2"}]'
Settings (environment): LAB2PROD_MODEL (default "model"), LAB2PROD_IMAGES (folder of request
bodies: .png/.jpg sent as bytes, .json as application/json), LAB2PROD_TOKEN, LAB2PROD_SAMPLES
(file that receives every request's [latency ms, ok, route label, the Server-Timing header, HTTP status
(0: no answer), the wall-clock second it ended]),
LAB2PROD_MAX_REQUESTS (stop after that many; 0 means --run-time only), LAB2PROD_BACKOFF_MS (after a 429 or 503
answer a user waits that long before its next request, as a client that honours the refusal does; 0, the
default, retries at once), LAB2PROD_RATE_PER_USER (each user's requests per second at most; 0, the default, sends
the next request as soon as the last is answered).
"""

import itertools
import json
import os
import random
import time
from pathlib import Path

import gevent
from locust import FastHttpUser, constant, constant_throughput, events, task

MODEL = os.environ.get("LAB2PROD_MODEL", "model")
# Request bodies: every file of the folder, sent with the Content-Type its CONTENT_TYPE file names (any kind of
# model); without that file, .png/.jpg files as bytes and .json files as application/json.
FOLDER = Path(os.environ.get("LAB2PROD_IMAGES", "requests"))
DECLARED = (FOLDER / "CONTENT_TYPE").read_text().strip() if (FOLDER / "CONTENT_TYPE").exists() else ""
BODIES = [(p.read_bytes(), DECLARED or ("application/json" if p.suffix == ".json" else "application/octet-stream"))
          for p in sorted(FOLDER.iterdir())
          if p.name != "CONTENT_TYPE" and (DECLARED or p.suffix in (".png", ".jpg", ".jpeg", ".json"))]
TOKEN = os.environ.get("LAB2PROD_TOKEN", "")
SAMPLES = os.environ.get("LAB2PROD_SAMPLES", "")
MAX_REQUESTS = int(os.environ.get("LAB2PROD_MAX_REQUESTS", "0"))
BACKOFF_S = float(os.environ.get("LAB2PROD_BACKOFF_MS", "0")) / 1000
RATE_PER_USER = float(os.environ.get("LAB2PROD_RATE_PER_USER", "0"))
ROUTES = json.loads(os.environ.get("LAB2PROD_ROUTES", "[]")) or [
    {"path": f"/predictions/{MODEL}", "weight": 1, "label": MODEL}]
WEIGHTS = [route["weight"] for route in ROUTES]
_latencies = []
_user_seeds = itertools.count()


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception, response=None, **kwargs):
    timing = response.headers.get("Server-Timing", "") if response is not None and response.headers else ""
    status = int(getattr(response, "status_code", 0) or 0) if response is not None else 0
    _latencies.append([response_time, exception is None, name, timing or "", status, time.time()])


@events.quitting.add_listener
def _save(environment, **kwargs):
    if SAMPLES:
        Path(SAMPLES).write_text(json.dumps(_latencies))


class Client(FastHttpUser):
    wait_time = constant_throughput(RATE_PER_USER) if RATE_PER_USER else constant(0)

    def on_start(self):
        self.index = 0
        self.router = random.Random(next(_user_seeds))  # each user draws its own, reproducible split

    @task
    def predict(self):
        body, content_type = BODIES[self.index % len(BODIES)]
        self.index += 1
        route = self.router.choices(ROUTES, weights=WEIGHTS)[0]
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
        with self.client.post(route["path"], data=body, headers=headers, name=route["label"],
                              catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
        if BACKOFF_S and response.status_code in (429, 503):
            gevent.sleep(BACKOFF_S)
        if MAX_REQUESTS and len(_latencies) >= MAX_REQUESTS:
            self.environment.runner.quit()
