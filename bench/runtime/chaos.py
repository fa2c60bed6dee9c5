"""The chaos soak on loopback: several clients' load while, at random, workers are
killed, paused and restarted, the coordinator is stopped or killed and restarted, an
impostor takes a dead worker's port, a large call is abandoned, a busy neighbour takes a
core and idle connections pile up (``launch/chaos.py``).

Prints calls and inputs sent, inputs answered (and answered with fewer branches), calls
failed with an explicit error (by status), calls lost (no answer, no error), duplicated,
answers wrong (another class than the model offline for that input, exit and branches),
proofs of the key an impostor received (all must be 0), large calls abandoned on purpose,
each restarted worker's time from SERVING to its first use, and the same counts per case
(the event under way when a call started). Events are dealt from a shuffled deck, so
every case comes up once in every len(EVENTS) events.

Usage: python bench/runtime/chaos.py RUN_DIR --data PATH [--minutes 5] [--clients 4]
       [--events-per-minute 6] [--seed 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from distree.data import load_data
from distree.launch.chaos import EVENTS, model_expectations, run_soak
from distree.run import RunDir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data", required=True)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--events-per-minute", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    if not 0 < args.minutes <= 60:
        raise SystemExit("--minutes must be in (0, 60]")
    meta = RunDir(args.run_dir).meta
    test = load_data(args.data, None, meta.config.data.val_fraction, meta.config.data.split_seed).test
    logs = Path(tempfile.mkdtemp(prefix="distree-chaos-"))
    images = test.images[:2000]
    expected = model_expectations(args.run_dir, images)
    t0 = time.perf_counter()
    r = run_soak(
        args.run_dir,
        images,
        expected=expected,
        seconds=args.minutes * 60,
        clients=args.clients,
        events_per_minute=args.events_per_minute,
        seed=args.seed,
        log_dir=logs,
    )
    print(f"{args.minutes} min, {args.clients} clients, {len(r.events)} events (logs in {logs})")
    print(f"calls {r.calls}, inputs {r.inputs}; answered {r.answered} ({r.fewer_branches} with fewer branches)")
    print(f"failed with an explicit error: {sum(r.errors.values())} calls {dict(r.errors)}")
    print(f"lost: {r.lost}  duplicated: {r.duplicated}  wrong: {r.wrong}  proofs to impostors: {r.proofs_to_impostors}")
    print(f"large calls abandoned on purpose: {r.abandoned}")
    print("per case (the event under way when a call started):")
    for name, c in sorted(r.by_case.items()):
        print(
            f"  {name:18} calls {c['calls']:6}  inputs answered {c['answered']:6}  failed {c['failed']:4}  "
            f"lost {c['lost']}  wrong {c['wrong']}"
        )
    missing = [e for e in EVENTS if e not in r.by_case]
    if missing:
        print(f"cases that did not come up (run longer): {', '.join(missing)}")
    reuse = [v for v in r.reuse_s.values() if v is not None]
    never = [k for k, v in r.reuse_s.items() if v is None]
    if reuse:
        print(f"restarted workers used again after SERVING: max {max(reuse):.2f} s over {len(reuse)} restarts")
    if never:
        print(f"restarted workers never used again before the end: {never}")
    out = r.to_json() | {"minutes": args.minutes, "clients": args.clients, "wall_s": round(time.perf_counter() - t0, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
