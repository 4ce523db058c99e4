"""The demo's boards and posts, whose committed changes reach every page of their board.

A post is declared with ``broadcasts``: created, a worker renders posts/_post.html and
appends it to ``#posts`` on every page of ``board:<id>``; deleted, ``#post_<id>`` goes.
A board is declared with ``broadcasts_refreshes``: renamed, its pages refresh (morphing).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import Model
from turbocast import broadcasts, broadcasts_refreshes


@broadcasts_refreshes(lambda board: f"board:{board.id}", on=["update"])
class Board(Model):
    __tablename__ = "board"

    #: Boards are numbered by their URL (/boards/<id>), and made by their first post.
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(100))
    posts: Mapped[list[Post]] = relationship(
        back_populates="board", order_by="Post.id", cascade="all, delete-orphan"
    )


@broadcasts(lambda post: f"board:{post.board_id}")
class Post(Model):
    __tablename__ = "post"

    id: Mapped[int] = mapped_column(primary_key=True)
    board_id: Mapped[int] = mapped_column(ForeignKey("board.id"), index=True)
    text: Mapped[str] = mapped_column(String(500))
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC)
    )
    board: Mapped[Board] = relationship(back_populates="posts")
