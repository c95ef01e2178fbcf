"""Data the build needs, shipped with the package: source manifests (``*.yaml``),
the merge tables (synonyms), the color-name table and the Pascal-Part part table.
See ``PROVENANCE.md`` in this folder for where each file comes from."""
