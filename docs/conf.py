"""Sphinx configuration of atfork's documentation (``tox -e docs``)."""

from __future__ import annotations

import os
import sys
import urllib.request

sys.path.insert(0, os.path.abspath(".."))

import atfork  # found through the path above when not installed

project = "atfork"
author = "atfork's authors"
copyright = "atfork's authors"
release = version = atfork.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
]

html_theme = "furo"
html_title = f"atfork {release}"
exclude_patterns = ["_build"]
default_role = "any"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True

# Cross-references to the standard library and the client libraries resolve
# through their inventories, where one is reachable: the build also passes
# offline (and with -W), with plain text for those references.
_INVENTORIES = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "sqlalchemy": "https://docs.sqlalchemy.org/en/20",
    "pytest": "https://docs.pytest.org/en/stable",
}


def _reachable(url: str) -> bool:
    if os.environ.get("ATFORK_DOCS_OFFLINE"):
        return False
    try:
        with urllib.request.urlopen(url + "/objects.inv", timeout=3):  # noqa: S310  (fixed https URLs)
            return True
    except OSError:
        return False


intersphinx_mapping = {name: (url, None) for name, url in _INVENTORIES.items() if _reachable(url)}
