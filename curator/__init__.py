"""Curator: builds the web cache — a lossless, resolution-progressive
wavelet copy (:mod:`curator.wavelet`) and a thumbnail of every archived
image, and a metadata document per series — from the archive, as a Celery
worker on queue ``curator`` driven by a database sweeper."""
