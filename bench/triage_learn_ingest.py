"""Learning from labels, the way a team does it: ``socialcrm triage learn`` then ``ingest``.

    python bench/triage_learn_ingest.py --corpus ../shared/data/triage [--size 2000] [--seed 7]

``bench/triage_tickets.py`` cross-validates in process; this runs the commands a team runs,
each a real ``socialcrm`` process in a fresh folder (``socialcrm init``, SQLite, the shipped
rules, the scoring worker): ``--size`` labelled messages of a corpus (see the folder's
SOURCES.md) are written as the JSON Lines that ``socialcrm ingest`` reads, with their labels,
and learned with ``socialcrm triage learn FILE`` (which trains at once); then other messages
of the same corpus, never labelled, are ingested with ``socialcrm ingest FILE`` and what was
stored is read back from the database:

- TweetEval sentiment (``sentiment_label``), as if sent to us: negative, neutral and positive
  messages ticketed, negative ones thanked (for information: TweetEval's negative tweets are
  mostly not complaints to a company, and some are sarcasm the model takes for praise);
- complaints.csv (complaint as ``needs_reply``): complaints ticketed, brand-directed
  non-complaints ticketed, complaints thanked. The ``random_tweet`` / ``random_reply`` rows
  are written as found by search, not sent to us.

The messages are dated a few minutes ago, so that they are live traffic and get their drafts
("thanked" counts thank-you drafts). Goals after learning from 2,000 labels: >= 90% of
negative messages and of complaints ticketed, <= 10% of positive ones, no complaint thanked.
The corpora are third-party research data: never used by the tests, never shipped.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from triage import THANKS_TEMPLATE, share
from triage_learned import _complaints as complaints
from triage_learned import _tweeteval as tweeteval

SOCIALCRM = [sys.executable, "-m", "socialcrm"]
RANDOM_ROWS = ("random_tweet", "random_reply")


def record(key: str, text: str, direct: bool, when: datetime) -> dict[str, object]:
    """One message in the JSON Lines format of ``socialcrm ingest``."""
    return {
        "channel": "x",
        "external_id": key,
        "text": text,
        "author": {"user_id": key, "handle": f"user_{key}"},
        "created_at": when.isoformat(),
        "direct": direct,
    }


def write(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def run(folder: Path, *args: str) -> str:
    """One ``socialcrm`` command in ``folder``; its output, or the bench stops with it."""
    done = subprocess.run(
        [*SOCIALCRM, *args], cwd=folder, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"socialcrm {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


def learn_and_ingest(
    learn: list[dict[str, object]], test: list[dict[str, object]]
) -> tuple[dict[str, tuple[bool, str | None, int | None]], str, float]:
    """Learn from ``learn``, ingest ``test``: per test message, ticketed, the draft's template
    and the model version that read it; the model's ticket threshold line; seconds taken."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run(folder, "init")
        learned = run(folder, "triage", "learn", str(write(folder / "learn.jsonl", learn)))
        threshold = next((ln for ln in learned.splitlines() if ln.startswith("Tickets:")), "")
        run(folder, "ingest", str(write(folder / "test.jsonl", test)))
        with sqlite3.connect(folder / "socialcrm.db") as db:
            rows = db.execute(
                "SELECT m.external_id, m.ticket_id IS NOT NULL, r.template, m.triage_version "
                "FROM message m LEFT JOIN reply r ON r.message_id = m.id"
            ).fetchall()
    return {k: (bool(t), tpl, v) for k, t, tpl, v in rows}, threshold, time.perf_counter() - start


def shown(flags: list[bool]) -> str:
    """The share of true flags, as printed."""
    return f"{share(flags):6.1%}" if flags else "     -"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--size", type=int, default=2000, help="labelled messages learned from")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    now = datetime.now(UTC).replace(microsecond=0)
    goals: list[tuple[str, bool]] = []

    # TweetEval: the class, learned from `sentiment_label`; the others are ingested.
    pool = tweeteval(args.corpus)
    rng.shuffle(pool)
    learn_rows, test_rows = pool[: args.size], pool[args.size : 2 * args.size]
    learn = [
        {**record(f"l{i}", t, True, now - timedelta(days=30)), "sentiment_label": y}
        for i, (t, y) in enumerate(learn_rows)
    ]
    test = [
        record(f"t{i}", t, True, now - timedelta(minutes=5)) for i, (t, _y) in enumerate(test_rows)
    ]
    got, threshold, took = learn_and_ingest(learn, test)
    label = {f"t{i}": y for i, (_t, y) in enumerate(test_rows)}
    by = {
        c: [got[k] for k, y in label.items() if y == c] for c in ("negative", "neutral", "positive")
    }
    unread = sum(1 for g in got.values() if g[2] is None or g[2] <= 0)
    print(
        f"TweetEval sentiment: learned from {len(learn)}, then {len(test)} others ingested as if "
        f"sent to us ({took:.0f} s)"
    )
    print(f"  {threshold}")
    print(
        f"  ticketed: negative {shown([g[0] for g in by['negative']])}, neutral "
        f"{shown([g[0] for g in by['neutral']])}, positive {shown([g[0] for g in by['positive']])}"
        f"; negative thanked {shown([g[1] == THANKS_TEMPLATE for g in by['negative']])}"
    )
    print(f"  read by the team's model: {len(got) - unread} of {len(got)}")
    neg = [g[0] for g in by["negative"]]
    pos = [g[0] for g in by["positive"]]
    goals += [
        ("negative ticketed >= 90%", sum(neg) >= 0.9 * len(neg)),
        ("positive ticketed <= 10%", sum(pos) <= 0.1 * len(pos)),
    ]

    # complaints.csv: complaint learned as `needs_reply`; the rest of the corpus ingested.
    rows = complaints(args.corpus)
    rng.shuffle(rows)
    learn_c, test_c = rows[: args.size], rows[args.size :]
    learn = [
        {
            **record(f"l{i}", t, d not in RANDOM_ROWS, now - timedelta(days=30)),
            "needs_reply": y == "1",
        }
        for i, (t, y, d) in enumerate(learn_c)
    ]
    test = [
        record(f"t{i}", t, d not in RANDOM_ROWS, now - timedelta(minutes=5))
        for i, (t, _y, d) in enumerate(test_c)
    ]
    got, threshold, took = learn_and_ingest(learn, test)
    yes = [got[f"t{i}"] for i, (_t, y, _d) in enumerate(test_c) if y == "1"]
    other = [
        got[f"t{i}"] for i, (_t, y, d) in enumerate(test_c) if y != "1" and d not in RANDOM_ROWS
    ]
    print(
        f"complaints.csv: learned from {len(learn)}, then the other {len(test)} ingested "
        f"({took:.0f} s)"
    )
    print(f"  {threshold}")
    print(
        f"  complaints ticketed {shown([g[0] for g in yes])}, brand-directed non-complaints "
        f"ticketed {shown([g[0] for g in other])}, complaints thanked "
        f"{shown([g[1] == THANKS_TEMPLATE for g in yes])}"
    )
    goals += [
        ("complaints ticketed >= 90%", sum(g[0] for g in yes) >= 0.9 * len(yes)),
        ("no complaint thanked", not any(g[1] == THANKS_TEMPLATE for g in yes)),
    ]
    for name, ok in goals:
        print(f"  {'ok  ' if ok else 'MISS'} {name}")
    return 0 if all(ok for _n, ok in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
