"""Archive: keeps the DICOM objects on their tiers (cache, long-term), one
verified copy row each, and serves them over the transfer protocol."""
