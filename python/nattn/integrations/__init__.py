"""Integrations of nattn into other libraries' models (optional dependencies, imported on demand).

`nattn.integrations.diffusers` needs `pip install nattn[diffusers]`.
"""
