"""The recipes: each script is a command-line entry point (``python recipes/NAME.py --help``).

Installed as ``timm_gam.recipes`` too, so that ``timm-gam train|eval|publish|export|visualize`` runs them.
"""
