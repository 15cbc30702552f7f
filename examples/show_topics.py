"""Print topics from `st train` output (JSONL) one per line: python show_topics.py TOPICS.jsonl."""

from __future__ import annotations

import sys

import orjson


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        for line in f:
            topic = orjson.loads(line)
            print(f"{topic['topic']:>3}  {' '.join(topic['words'][:10])}")


if __name__ == "__main__":
    main()
