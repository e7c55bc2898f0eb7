"""The engine pool: members and their health, prefix hashing, and prefix-affine routing."""
