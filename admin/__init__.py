"""Administration tools: the ``pacs`` command line."""
