"""Every error idlemap raises exits with a code from the one table."""
import importlib
import pkgutil

import idlemap
from idlemap.errors import EXIT_CODES, IdlemapError


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def test_every_error_class_uses_a_code_of_the_table():
    # Import every module, so that every error class is defined.
    skip = ("idlemap.__main__",)
    for m in pkgutil.walk_packages(idlemap.__path__, "idlemap."):
        if m.name not in skip:
            try:
                importlib.import_module(m.name)
            except ImportError:          # an optional extra (pyfuse3, ...) not installed
                pass
    classes = [IdlemapError, *_all_subclasses(IdlemapError)]
    assert len(classes) > 15
    bad = {f"{c.__module__}.{c.__qualname__}": c.exit_code for c in classes if c.exit_code not in EXIT_CODES}
    assert bad == {}
