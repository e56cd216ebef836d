"""Write: vectors and dead letters as Parquet part files."""
