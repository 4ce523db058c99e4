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

    python -m bench.deflate
"""

from __future__ import annotations

import random
import zlib

from markupsafe import Markup

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


def main() -> None:
    print("| stream | HTML bytes | frame bytes: as is / deflated | ÷ | "
          "server CPU µs: as is / deflated | client inflate µs |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, html in samples().items():
        plain, deflated, cpu = cost(html)
        print(
            f"| {name} | {len(html):,} | {len(plain):,} / {len(deflated):,} "
            f"| {len(plain) / len(deflated):.1f}× "
            f"| {cpu['as is'][0]:.1f} / {cpu['deflated'][0]:.1f} | {cpu['inflate'][0]:.1f} |"
        )


if __name__ == "__main__":
    main()
