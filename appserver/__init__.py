"""Application Server: users, the REST API, DICOMweb and the web viewer.
Not yet implemented: nothing starts it."""
