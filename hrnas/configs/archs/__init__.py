"""Architectures shipped with hrnas, found by name (``hrnas.models.factory.load_arch``)."""
