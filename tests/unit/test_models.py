"""turbocast.models' conventions, and turbocast without SQLAlchemy."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from turbocast import InvalidStreamError, TurboError, broadcasts, dom_id
from turbocast.models import _declarations


class Base(DeclarativeBase):
    pass


@broadcasts("everything")
class BlogPost(Base):
    __tablename__ = "blog_post"
    id: Mapped[int] = mapped_column(primary_key=True)


@broadcasts(lambda item: [f"list:{item.id}", "all"], name="entry", template="x.html", target="t")
class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True)


def test_names_follow_the_class_name_in_snake_case():
    (declaration,) = _declarations(BlogPost)
    assert (declaration.name, declaration.template, declaration.target) == (
        "blog_post",
        "blog_posts/_blog_post.html",
        "blog_posts",
    )
    assert declaration.streams(BlogPost(id=3)) == ("everything",)
    assert dom_id(BlogPost(id=12)) == "blog_post_12"
    assert dom_id(BlogPost(id=12), "edit") == "edit_blog_post_12"
    assert dom_id(BlogPost()) == "new_blog_post"


def test_each_convention_has_its_override():
    (declaration,) = _declarations(Item)
    assert (declaration.name, declaration.template, declaration.target) == ("entry", "x.html", "t")
    assert declaration.streams(Item(id=4)) == ("list:4", "all")
    assert dom_id(Item(id=4)) == "entry_4"


def test_a_bad_declaration_is_refused():
    with pytest.raises(InvalidStreamError, match="inserts_by"):
        broadcasts("s", inserts_by="replace")
    with pytest.raises(TurboError, match="on= takes"):
        broadcasts("s", on=["created"])
    with pytest.raises(TurboError, match="not a SQLAlchemy mapped class"):
        broadcasts("s")(object)


def test_turbocast_imports_without_sqlalchemy_and_says_how_to_get_it():
    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "import turbocast\n"
        "from turbocast import Turbo, TurboStream\n"
        "try:\n"
        "    turbocast.broadcasts\n"
        "except ModuleNotFoundError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "pip install 'turbocast[sqlalchemy]'" in result.stdout
