"""The patient page and mobile viewer: exam summary, report, thumbnails and a stack viewer."""
