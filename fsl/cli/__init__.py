"""`fsl`: the command line over the data flow, one module per command family."""
