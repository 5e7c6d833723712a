"""The real-kernel fixture, for every notebook test module."""

from tests.notebook.test_kernel import kernels

__all__ = ["kernels"]
