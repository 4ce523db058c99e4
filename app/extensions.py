"""Extension instances, created unbound; ``create_app`` binds them."""

from typing import TYPE_CHECKING

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase

from turbocast import Turbo


class Base(DeclarativeBase):
    """What the demo's models are made of: Flask-SQLAlchemy builds ``db.Model`` from it."""


turbo = Turbo()
db = SQLAlchemy(model_class=Base)

# The models' base class: db.Model, which type checkers know only as its declarative base.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
