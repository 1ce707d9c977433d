"""Diffusion models as latent-variable models trained on their evidence lower bound.

x0 is the observation, x1..xT the latents, q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
a fixed noising process, p(x_T) = N(0, I) and p_theta(x_{t-1} | x_t) learned (Sohl-Dickstein et
al. 2015; Ho, Jain & Abbeel 2020, "DDPM"; Nichol & Dhariwal 2021, "improved DDPM"). The bound on
-log p(x0), in nats,

    L = L_0 + sum_{t=2..T} L_{t-1} + L_T,
    L_0     = -E_q[log p_theta(x0 | x1)]                                  reconstruction
    L_{t-1} =  E_q[KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))]    denoising matching
    L_T     =  KL(q(x_T | x0) || p(x_T))                                  prior matching

Modules:

* ``schedules``: the noise schedules (linear, cosine, from betas), computed in float64 NumPy,
  as a ``Schedule`` of every per-step coefficient; ``Schedule.cast(dtype)`` for JAX arrays.
* ``process``: the forward process's closed forms (q(x_t | x0), the posterior
  q(x_{t-1} | x_t, x0)), the reverse model's mean and variance from a predicted noise, and the
  KL of diagonal Gaussians.
* ``decoders``: the reconstruction likelihood log p_theta(x0 | x1) and the samplers' point
  estimate of x0, one contract for all: Gaussian for continuous data, discretised Gaussian or
  VDM's grid posterior for data on a grid of bins (8-bit images).
* ``bound``: what the two bounds share: the estimate over a data set in nats and bits per
  dimension with standard errors, the batching of per-example terms, and the importance-weighted
  bounds from the log-weights of whole noisy paths (each model's ``path_log_weight``).
* ``elbo``: the three terms of the discrete-time bound and the training losses (L_vlb with
  uniform or importance-sampled t, L_simple, L_hybrid).
* ``data``: built-in data sets with their exact entropies where known (gmm8, checkerboard,
  quantised gmm8), two moons, the 8x8 digits, and the user's own arrays.
* ``networks``: equinox denoisers predicting the noise (an MLP with Fourier time features, a
  small convolutional net for 8x8 images), optionally with improved DDPM's variance output.
* ``vdm``: variational diffusion models (Kingma et al. 2021): the continuous-time bound with a
  learned monotone noise schedule, in the same three terms, its discrete-time version with T
  steps, training by the bound with antithetic time, and ancestral sampling.
* ``train``: the optax training loop in compiled chunks, with EMA weights and checkpoints from
  which an interrupted run resumes to exactly the uninterrupted result.
* ``sample``: ancestral sampling from the learned reverse process.
* ``recipes``: per-data-set recipes (vdm by default, ddpm on request) and the factories of their
  optimiser, schedule, network and decoder.
* ``run_folder``: a run on disk (run.json with the model's checksum, the model, the loss trace,
  the checkpoints), written so that a finished run is never lost.
* ``likelihood``: -log p(x) under the model's probability-flow ODE (diffrax; the exact trace
  or Hutchinson's estimate; the dequantised bound for binned data), with the parts of its error.
* ``evaluate``: the bound of a trained run as a typed report (``BoundReport``), and beside it
  the ODE likelihood and the importance-weighted bounds over the noisy path, side by side.
* ``run``: training a recipe into a run folder and sampling from it: the entry points behind
  ``elbox diffusion train|elbo|sample``.
"""
