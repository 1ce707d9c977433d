"""Variational inference: families, ELBO estimators, the optax fitting loop and CAVI."""
