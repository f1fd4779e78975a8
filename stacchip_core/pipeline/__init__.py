"""Processing jobs: select, ingest, index, merge; the job runner for array jobs and Dask."""
