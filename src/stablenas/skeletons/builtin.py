"""The built-in skeletons: importing this module registers each (and its evaluation networks), in
this order."""

from . import darts, nb201
from .rnn import skeleton as rnn

__all__ = ["darts", "nb201", "rnn"]
