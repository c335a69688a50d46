"""Root conftest: nbval runs the Jupytext ``.md`` chapters in ``book/`` in place.

It also applies the tests' thread policy (:func:`lincollapse.threads.environment_for_tests`: BLAS
and torch on one thread each) before anything loads numpy or torch; pytest-xdist workers and the
kernels nbval starts inherit it. Variables set by the user are kept.
"""

import os

from lincollapse.threads import environment_for_tests

os.environ.update(environment_for_tests())

pytest_plugins = ["tools.nbval_jupytext"]
