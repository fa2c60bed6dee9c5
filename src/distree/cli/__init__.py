"""The ``distree`` command."""
