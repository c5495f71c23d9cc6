"""Curator: builds the web cache (progressive wavelet images, thumbnails,
per-series metadata). Not yet implemented: nothing starts it."""
