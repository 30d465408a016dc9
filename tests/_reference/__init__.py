"""Frozen copies of the engines as they were before issue 14 moved them onto ``codecircuits.core``.

Equivalence tests (``tests/test_core_equivalence.py``) check that the rebuilt methods give the same numbers as
these copies on the whole architecture matrix. Delete a copy only when the new code has been equal to it for
the whole change.
"""
