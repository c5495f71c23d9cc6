"""Shared kernel of PACS Cluster: settings, database, Celery app, transfer
protocol, storage backends, DICOM helpers, logging and the process supervisor."""
