"""Reports: PNG plots of a run and one self-contained report.html a person opens offline."""
