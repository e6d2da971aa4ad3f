"""The clients of deploy/swarm/check.sh: steady traffic through HAProxy for the whole check, every answer logged.

    load.py run URL PHOTO LOG STOP_FILE [--clients 8]
    load.py summary LOG PHASES

`run`: CLIENTS threads (half classify PHOTO at URL/v1/classify, half ask URL/v1/sentiment for a review), each
sending its next request as soon as it has an answer, until STOP_FILE exists. One line of LOG per answer: the
time it came, the kind, the status (or `error:<what>` when none came), the replica that answered (HAProxy's
X-Ember-Replica), the model version that answered (sentiment) and the latency in ms.

`summary`: for each phase of PHASES (lines `name start end`, Unix seconds, as check.sh writes them) the answers,
those not 200, those that never came, the longest gap between two answers, p50/p99 latency, the answers per
replica and the sentiment versions per replica (with when each was first seen). Exits 1 if any answer of any
phase was not a 200.
"""

import argparse
import collections
import json
import os
import threading
import time
import urllib.error
import urllib.request

REVIEWS = [
    "A wonderful, moving film: the best I have seen all year.",
    "Dull, predictable and far too long; I nearly walked out.",
    "The acting is superb and the story stays with you.",
    "A mess of a script that wastes a talented cast.",
]


def ask(request, timeout):
    """(status, replica, body): an HTTP error is an answer too; no answer raises."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers.get("X-Ember-Replica", "-"), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("X-Ember-Replica", "-"), error.read()


def client(index, args, photo, log, lock):
    classify = index % 2 == 0
    n = 0
    while not os.path.exists(args.stop_file):
        if classify:
            request = urllib.request.Request(f"{args.url}/v1/classify?top_k=1", data=photo,
                                             headers={"Content-Type": "image/jpeg"})
        else:
            body = json.dumps({"text": REVIEWS[(index + n) % len(REVIEWS)]}).encode()
            request = urllib.request.Request(f"{args.url}/v1/sentiment", data=body,
                                             headers={"Content-Type": "application/json"})
        n += 1
        start = time.time()
        version = "-"
        try:
            status, replica, answer = ask(request, timeout=60)
            if status == 200 and not classify:
                version = str(json.loads(answer).get("version", "-"))
            status = str(status)
        except Exception as error:  # no answer at all: the failure this check counts first
            status, replica = f"error:{type(error).__name__}", "-"
        end = time.time()
        with lock:
            log.write(f"{end:.3f} {'classify' if classify else 'sentiment'} {status} {replica} {version} "
                      f"{(end - start) * 1000:.1f}\n")
            log.flush()


def run(args):
    with open(args.photo, "rb") as f:
        photo = f.read()
    lock = threading.Lock()
    with open(args.log, "a") as log:
        threads = [threading.Thread(target=client, args=(i, args, photo, log, lock)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else 0.0


def summary(args):
    answers = []
    with open(args.log) as f:
        for line in f:
            t, kind, status, replica, version, ms = line.split()
            answers.append((float(t), kind, status, replica, version, float(ms)))
    answers.sort()
    phases = [line.split() for line in open(args.phases) if line.strip()]
    failed_any = False
    print("| phase | seconds | answers | not 200 | no answer | longest gap s | p50 ms | p99 ms | answers per replica |")
    print("|---|---|---|---|---|---|---|---|---|")
    versions = []
    for name, start, end in phases:
        start, end = float(start), float(end)
        inside = [a for a in answers if start <= a[0] < end]
        not_ok = [a for a in inside if a[2] != "200"]
        none = [a for a in not_ok if a[2].startswith("error:")]
        failed_any |= bool(not_ok)
        times = [start] + [a[0] for a in inside] + [end]
        gap = max(b - a for a, b in zip(times, times[1:]))
        per_replica = collections.Counter(a[3] for a in inside if a[2] == "200")
        spread = " ".join(f"{r}:{c}" for r, c in sorted(per_replica.items()))
        latencies = [a[5] for a in inside]
        print(f"| {name} | {end - start:.1f} | {len(inside)} | {len(not_ok) - len(none)} | {len(none)} | {gap:.1f} | "
              f"{percentile(latencies, 0.5):.0f} | {percentile(latencies, 0.99):.0f} | {spread} |")
        seen = {}
        for t, kind, status, replica, version, _ in inside:
            if kind == "sentiment" and status == "200":
                seen.setdefault((replica, version), t - start)
        versions.append((name, seen))
        for t, kind, status, replica, version, _ in not_ok[:5]:
            print(f"    {name}: {kind} answered {status} by {replica} at +{t - start:.1f} s")
    print()
    print("sentiment versions answered per replica (first seen, seconds into the phase):")
    for name, seen in versions:
        text = ", ".join(f"{r} v{v} +{t:.1f}" for (r, v), t in sorted(seen.items()))
        print(f"  {name}: {text}")
    return 1 if failed_any else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run")
    runner.add_argument("url")
    runner.add_argument("photo")
    runner.add_argument("log")
    runner.add_argument("stop_file")
    runner.add_argument("--clients", type=int, default=8)
    summarizer = commands.add_parser("summary")
    summarizer.add_argument("log")
    summarizer.add_argument("phases")
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    else:
        raise SystemExit(summary(args))


if __name__ == "__main__":
    main()
