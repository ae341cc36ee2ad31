"""Example modules shipped with taskpool, used by ``taskpool demo`` and the docs."""
