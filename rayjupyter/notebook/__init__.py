"""Jupyter front end: magics, progress widgets and charts (imports core, never the reverse)."""
