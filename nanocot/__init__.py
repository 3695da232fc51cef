"""nanocot: a from-scratch minimal GPT for studying chain-of-thought learned by RL on modular addition.

The modules are imported where they are used (`from nanocot.model import GPT`); importing the package
itself loads nothing, torch included.
"""

__version__ = "0.1.0"
