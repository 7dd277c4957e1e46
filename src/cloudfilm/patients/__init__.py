"""Patients across institutions: cross-references (PIX), consent, recognition records."""
