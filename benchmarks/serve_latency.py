"""Neighbour queries over HTTP against `survey serve` on a surveyed warehouse, with and without the exact rerank.

    python benchmarks/serve_latency.py -w catalogs/warehouse [--queries 200] [--k 10]

Starts `survey serve` on a free loopback port, warms it up (the first query of a space loads its index and stored
distances), then times GET /representations/{id}/neighbors?k=K for queries drawn from the newest space's
representations: with the rerank (stored distances read, missing ones computed) and with `rerank=false` (the FAISS
shortlist alone), alternating in chunks so that machine noise hits both alike. Prints one JSON object: p50/p90
milliseconds of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time

import httpx
import numpy as np

CHUNK = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-w", "--warehouse", default="catalogs/warehouse")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "from survey.cli import main; main()", "serve", "-w",
                               args.warehouse, "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    client.get("/health")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("survey serve did not start") from None
                    time.sleep(0.2)
            space = max(client.get("/spaces").json(), key=lambda row: row["created"])
            ids = json.loads(subprocess.run(
                [sys.executable, "-c", "from survey.cli import main; main()", "sql", "-w", args.warehouse, "-f",
                 "json", f"SELECT rep_id FROM embeddings WHERE space_id = '{space['space_id']}'"],
                capture_output=True, text=True, check=True).stdout)
            reps = [row["rep_id"] for row in ids]
            queries = np.random.default_rng(0).choice(reps, size=args.queries)
            for rerank in ("true", "false"):  # warm-up: index, stored distances, prepared arrays
                client.get(f"/representations/{queries[0]}/neighbors", params={"k": args.k, "rerank": rerank})
            times: dict[str, list[float]] = {"rerank": [], "shortlist": []}
            for start in range(0, len(queries), CHUNK):
                for name, rerank in (("rerank", "true"), ("shortlist", "false")):
                    for rep in queries[start:start + CHUNK]:
                        began = time.perf_counter()
                        response = client.get(f"/representations/{rep}/neighbors",
                                              params={"k": args.k, "rerank": rerank})
                        times[name].append(1e3 * (time.perf_counter() - began))
                        response.raise_for_status()
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {"warehouse": args.warehouse, "space": space["name"], "n_items": space["n_items"], "k": args.k,
              "queries": args.queries}
    for name, values in times.items():
        result[f"{name}_p50_ms"] = round(float(np.percentile(values, 50)), 2)
        result[f"{name}_p90_ms"] = round(float(np.percentile(values, 90)), 2)
    result["p50_ratio_rerank_to_shortlist"] = round(result["rerank_p50_ms"] / result["shortlist_p50_ms"], 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
