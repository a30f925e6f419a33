"""The free-threaded build (3.14t) and the test dependencies it goes without."""

from __future__ import annotations

import sys
import sysconfig

# A skip whose reason starts with this is about the interpreter running the
# tests, not about something missing: ATFORK_NO_SKIP lets it through.
INTERPRETER_SKIP = "not on this Python: "

# Whether this interpreter was built free-threaded, whatever the GIL's state
# now: an extension module that does not declare free-threading support
# enables the GIL when it is imported.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def gil_enabled() -> bool:
    """Whether the GIL is enabled now: always, on a build that is not free-threaded."""
    if sys.version_info >= (3, 13):
        return sys._is_gil_enabled()
    return True


# The modules of pyproject.toml's test-gil extra that the tests use, with the
# reason their tests skip on the free-threaded build, where tox does not
# install that extra.
NEEDS_GIL = {
    module: (
        f"{INTERPRETER_SKIP}{distribution} would enable the GIL of the free-threaded build "
        "(pyproject.toml's test-gil extra)"
    )
    for module, distribution in [
        ("psycopg2", "psycopg2-binary"),
        ("pyuwsgi", "pyuwsgi"),
        ("grpc", "grpcio"),
        ("gevent", "gevent"),
    ]
}
