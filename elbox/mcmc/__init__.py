"""MCMC kernels and the sampling driver."""
