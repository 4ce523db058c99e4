"""Demo views."""

from __future__ import annotations

from flask import render_template

from app.demo import bp


@bp.get("/")
def index() -> str:
    return render_template("demo/index.html")
