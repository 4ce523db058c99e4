"""Extension instances, created unbound; ``create_app`` binds them."""

from turbocast import Turbo

turbo = Turbo()
