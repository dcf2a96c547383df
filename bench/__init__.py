"""Side-by-side benchmarks of pyunion and its peers."""
