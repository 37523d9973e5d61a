"""The chains test kit's pytest plugin: async tests run on anyio, each under the leak
check (a task or busy thread left running fails the test)."""

pytest_plugins = ["chains.testing.pytest_plugin"]
