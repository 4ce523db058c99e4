"""What permessage-deflate costs and saves per message (``TURBO_WEBSOCKET_DEFLATE``).

turbocast compresses a message once per web process (every socket that negotiated the
extension writes the same compressed frame: ``server_no_context_takeover``), so the
server's cost is per message, not per socket. For three sizes of Turbo Stream, from the
same run:

- bytes on the wire: the frame as it is (the peer) and deflated;
- server CPU per message to build its frame: as it is (the peer) and deflated;
- the client's CPU to inflate it (zlib, as a browser does; measured here in Python's
  zlib, which is the same C library).

The HTML is made like a demo page's: rows of varied words, ids and times, not padding
(padding compresses far better than real pages do).

    python -m bench.deflate [--json]

``make bench`` runs it as W9.
"""

from __future__ import annotations

import random
import zlib
from typing import Any

from markupsafe import Markup

from bench.common import library_cli
from bench.publish_cost import measure
from turbocast import TurboStream
from turbocast.message import Message

_WORDS = [
    "board",
    "post",
    "reply",
    "thread",
    "update",
    "draft",
    "review",
    "merge",
    "release",
    "build",
    "deploy",
    "issue",
    "fix",
    "test",
    "green",
    "red",
    "queue",
    "worker",
    "socket",
    "page",
    "stream",
    "render",
    "template",
    "session",
    "user",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "for",
    "on",
    "with",
    "is",
    "was",
    "are",
    "be",
    "it",
    "this",
    "that",
    "from",
    "by",
    "at",
    "as",
]


def _row(rng: random.Random, i: int) -> str:
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 30)))
    author = rng.choice(["ann", "bob", "cy", "dee", "eve"])
    return (
        f'<article id="post_{rng.randint(1, 99999)}" class="post">'
        f'<header><span class="author">{author}</span>'
        f'<time datetime="2026-12-02T12:{i % 60:02d}:{rng.randint(0, 59):02d}Z">12:{i % 60:02d}</time>'
        f"</header><p>{text}</p></article>"
    )


def samples() -> dict[str, bytes]:
    """Three streams: one post appended, a list of 20 replaced, a section of 200."""
    rng = random.Random(7)
    one = TurboStream.append("posts", Markup(_row(rng, 1)))
    twenty = TurboStream.replace("posts", Markup("".join(_row(rng, i) for i in range(20))))
    section = TurboStream.update("board", Markup("".join(_row(rng, i) for i in range(200))))
    return {
        "one post": str(one).encode(),
        "20 posts": str(twenty).encode(),
        "200 posts": str(section).encode(),
    }


def cost(html: bytes) -> tuple[bytes, bytes, dict[str, tuple[float, float]]]:
    """One stream's frames as it is and deflated, and the CPU and wall µs of each step."""
    plain = Message(b"c", "s", "1-0", html).plain_frame
    deflated = Message(b"c", "s", "1-0", html).plain_deflated_frame
    payload = deflated[{126: 4, 127: 10}.get(deflated[1], 2) :]  # (after the header)
    tail = b"\x00\x00\xff\xff"  # (RFC 7692: what the sender left off)
    steps = {
        "as is": lambda: Message(b"c", "s", "1-0", html).plain_frame,
        "deflated": lambda: Message(b"c", "s", "1-0", html).plain_deflated_frame,
        "inflate": lambda: zlib.decompressobj(-15).decompress(payload + tail),
    }
    return plain, deflated, measure(steps)


def results() -> dict[str, Any]:
    """Each stream's bytes and CPU, as ``make bench``'s W9 records them."""
    rows = {}
    for name, html in samples().items():
        plain, deflated, cpu = cost(html)
        rows[name] = {
            "html_bytes": len(html),
            "plain_bytes": len(plain),
            "deflated_bytes": len(deflated),
            "plain_cpu_us": cpu["as is"][0],
            "deflated_cpu_us": cpu["deflated"][0],
            "inflate_cpu_us": cpu["inflate"][0],
        }
    return {"rows": rows}


def table(result: dict[str, Any]) -> list[str]:
    """The rows as a Markdown table."""
    lines = [
        "| stream | HTML bytes | frame bytes: as is / deflated | ÷ | "
        "server CPU µs: as is / deflated | client inflate µs |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        lines.append(
            f"| {name} | {row['html_bytes']:,} | {row['plain_bytes']:,} / "
            f"{row['deflated_bytes']:,} | {row['plain_bytes'] / row['deflated_bytes']:.1f}× "
            f"| {row['plain_cpu_us']:.1f} / {row['deflated_cpu_us']:.1f} "
            f"| {row['inflate_cpu_us']:.1f} |"
        )
    return lines


def main() -> None:
    library_cli(__doc__ or "", results, table)


if __name__ == "__main__":
    main()
