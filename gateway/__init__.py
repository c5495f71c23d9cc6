"""Network Gateway: the DICOM port (C-ECHO, C-STORE), the spool and the
handoff of received objects to the archive and the index."""
