"""Vendor tests: the shared harness's asserts explain their failures as the tests' own do."""

import pytest

pytest.register_assert_rewrite("tests.vendors.harness")
