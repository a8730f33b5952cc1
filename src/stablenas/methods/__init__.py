"""Search methods as composable hooks into one search loop (see ``methods.base``)."""

from .base import METHODS, Method, MethodOptions, Mix, register_method

__all__ = ["METHODS", "Method", "MethodOptions", "Mix", "register_method"]
