"""Sub-commands of the ``codecircuits`` CLI, one module each (see ``codecircuits.cli``)."""
