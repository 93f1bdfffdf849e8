"""Person-search evaluation: the standard search and detection protocols."""
