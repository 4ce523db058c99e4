"""The demo site: a throwaway showcase that uses only the public turbocast API."""

from flask import Blueprint

bp = Blueprint("demo", __name__)

from app.demo import views  # noqa: E402,F401  (registers the routes)
