"""Reports: typed models (models.py) and their renderings (markdown.py, html.py)."""
