"""The export directories ``edgecnn tune`` measures: the export tests' tiny trained run and its export."""

from tests.export.conftest import sample3, seed_export, seed_run  # noqa: F401  (fixtures)
