"""`ft smoke`: a recipe shrunk to run on a CPU in seconds, with a pass/fail report (see runner)."""
