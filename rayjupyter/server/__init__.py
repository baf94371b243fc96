"""Jupyter server extension behind the JupyterLab side panel."""
