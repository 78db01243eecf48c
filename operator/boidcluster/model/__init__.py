"""The resource model: pydantic types for every kind, validation, and CRD generation.

The bottom layer: it imports nothing else from the package, so every other layer can trust it.
"""
