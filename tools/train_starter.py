"""Rebuild the starter sentiment model (socialcrm/data/starter_sentiment.npz) from the source.

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d /tmp/vader
    python tools/train_starter.py /tmp/vader/vaderSentiment-3.3.2.tar.gz

The vaderSentiment source package holds VADER's human-rated data (additional_resources/
hutto_ICWSM_2014.tar.gz, MIT License); the starter learns from its 4,200 rated tweets (see
socialcrm/starter.py). Prints the classes it learned from and where the model was written.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
from collections import Counter
from pathlib import Path

from socialcrm import starter

ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
TWEETS = "hutto_ICWSM_2014/tweets_GroundTruth.txt"


def rated_tweets(sdist: Path) -> list[tuple[float, str]]:
    """The rated tweets inside the vaderSentiment source package."""
    with tarfile.open(sdist) as outer:
        member = next((m for m in outer.getmembers() if m.name.endswith(ARCHIVE)), None)
        if member is None or (inner_file := outer.extractfile(member)) is None:
            raise SystemExit(f"{sdist}: no {ARCHIVE} inside; is it the vaderSentiment sdist?")
        with tarfile.open(fileobj=io.BytesIO(inner_file.read())) as inner:
            tweets = inner.extractfile(TWEETS)
            if tweets is None:
                raise SystemExit(f"{sdist}: {ARCHIVE} has no {TWEETS}")
            return starter.ratings(tweets.read().decode("utf-8").splitlines())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sdist", type=Path, help="vaderSentiment-3.3.2.tar.gz")
    ap.add_argument("--out", type=Path, default=starter.PATH)
    args = ap.parse_args(argv)
    rated = rated_tweets(args.sdist)
    counts = Counter(starter.label_of(mean) for mean, _ in rated)
    print(f"{len(rated)} rated tweets: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    payload = starter.train(rated).dump()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    print(f"wrote {args.out} ({len(payload):,} bytes, sha256 {digest[:16]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
