"""Film sheets: composed in cloudfilm from a study, stored as Secondary Capture in the study."""
