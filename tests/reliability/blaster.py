"""Child process of the race tests: fires many paid requests at once, from many threads.

``python -m tests.reliability.blaster JOB.json`` where the job is
``{"base": url, "start_at": unix time, "threads": n, "requests": [{"job": i, "path": p,
"authorization": a}, ...]}``. Every thread opens its own connection first, then all wait
for ``start_at`` (shared by every blaster process) and send their share at once. Prints one
JSON line per request: job, status, receipt and Retry-After headers, body (base64url).
"""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx

from farthing.core.encoding import b64url_encode


def _fire(base: str, share: list[dict[str, object]], start_at: float, out: list[str]) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        client.get("/healthz")  # connect before the start line
        while time.time() < start_at:
            time.sleep(0.0005)
        for request in share:
            response = client.get(
                str(request["path"]), headers={"authorization": str(request["authorization"])}
            )
            line = {
                "job": request["job"],
                "status": response.status_code,
                "receipt": response.headers.get("payment-receipt"),
                "retry_after": response.headers.get("retry-after"),
                "body": b64url_encode(response.content),
            }
            out.append(json.dumps(line))


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        job = json.load(handle)
    requests: list[dict[str, object]] = job["requests"]
    threads = int(job["threads"])
    out: list[str] = []
    workers = [
        threading.Thread(
            target=_fire, args=(job["base"], requests[i::threads], float(job["start_at"]), out)
        )
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
