"""`fercli.runtime`, a path the README once documented: the module now lives at `fercli.core.runtime`.

This name is the same module object, so code written against either path sees one set of names.
"""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("fercli.core.runtime")
