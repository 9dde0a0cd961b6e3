"""Suite-wide pytest configuration: the fixture plugins every test can use."""

pytest_plugins = ["tests.fixtures.postgres", "tests.fixtures.store"]
