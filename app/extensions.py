"""Extension instances, created unbound; ``create_app`` binds them."""

from app.turbo import Turbo

turbo = Turbo()
