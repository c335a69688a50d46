"""Root conftest: nbval runs the Jupytext ``.md`` chapters in ``book/`` in place."""

pytest_plugins = ["lincollapse.testing"]
