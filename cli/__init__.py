"""The `rscf` command line: the top layer, which drives every other package and which none imports."""
