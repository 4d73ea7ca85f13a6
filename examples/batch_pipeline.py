"""A batch pipeline: JSONL in, one program per record, JSONL out, and a summary.

Reads product reviews from `examples/data/reviews.jsonl`, runs `analyse` on every review with
`run_batch(progress_bar=True)` (all reviews in flight at once; on `lp.Local` they decode
together and share the few-shot prefix through the radix cache), and writes one JSON line per
review, in input order, to the path given as the first argument (default: a new temporary
file). A review whose program failed gets an `error` field instead of results: one failure
never sinks the batch.

Per review: a sentiment label (`select`), a star rating (`regex`) and a one-line summary
(free text). Gemma 3 270M gets the labels and stars right on reviews this clear; its summaries
sometimes copy a worked example instead. Run with:

    .venv/bin/python examples/batch_pipeline.py [results.jsonl]
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import lmprog as lp

REVIEWS = Path(__file__).parent / "data" / "reviews.jsonl"

FEW_SHOT = (
    "Review of a toaster: Toasts evenly and the crumb tray is easy to clean.\n"
    "Sentiment: positive\nStars: 5\nSummary: Even toasting, easy to clean.\n\n"
    "Review of a blender: Leaks from the bottom and smells burnt after a minute.\n"
    "Sentiment: negative\nStars: 1\nSummary: Leaks and smells burnt.\n\n"
)


@lp.function(temperature=0)  # greedy: the same results on every run
def analyse(s, product, text):
    s += FEW_SHOT + f"Review of a {product}: {text}\nSentiment:"
    s += lp.select("sentiment", [" positive", " negative"])
    s += "\nStars:" + lp.gen("stars", regex=" [1-5]")
    s += "\nSummary:" + lp.gen("summary", max_tokens=16, stop="\n")


def result_record(review: dict[str, Any], state: lp.ProgramState) -> dict[str, Any]:
    """The output line for one review: its id plus the program's values, or its error."""
    if state.error() is not None:
        return {"id": review["id"], "error": repr(state.error())}
    return {
        "id": review["id"],
        "product": review["product"],
        "sentiment": state["sentiment"].strip(),
        "stars": int(state["stars"]),
        "summary": state["summary"].strip(),
    }


def main() -> None:
    if len(sys.argv) > 1:
        output = Path(sys.argv[1])
    else:
        with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as handle:
            output = Path(handle.name)
    reviews = [json.loads(line) for line in REVIEWS.read_text().splitlines() if line.strip()]

    # No backend given: the default, lp.Local() with Gemma 3 270M in this process.
    states = analyse.run_batch(
        [{"product": r["product"], "text": r["text"]} for r in reviews], progress_bar=True
    )
    records = [result_record(r, s) for r, s in zip(reviews, states, strict=True)]
    output.write_text("".join(json.dumps(record) + "\n" for record in records))

    done = [r for r in records if "error" not in r]
    print(f"analysed {len(done)}/{len(records)} reviews -> {output}")
    for sentiment, count in sorted(Counter(r["sentiment"] for r in done).items()):
        stars = [r["stars"] for r in done if r["sentiment"] == sentiment]
        print(f"  {sentiment}: {count} reviews, mean {sum(stars) / len(stars):.1f} stars")
    for record in done:
        print(f"  #{record['id']:<2} {record['stars']}* {record['product']}: {record['summary']}")


if __name__ == "__main__":
    main()
