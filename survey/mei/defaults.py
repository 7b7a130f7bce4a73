"""The MEI optimisers' defaults, one place each: their functions' keyword defaults and the config's fields read
these (DESIGN §5.5)."""

GA_STEPS = 1000
GA_LR = 10.0
GA_BLUR_SIGMA = 1.0  # the gradient's Gaussian blur, in pixels

EGG_STEPS = 100  # respaced diffusion steps
EGG_ENERGY_SCALE = 10.0  # the MEI scale of Pierzchlewicz et al. 2023

PRIOR_WIDTHS = (16, 32, 32)  # UNet channels per level
PRIOR_STEPS = 3000
PRIOR_BATCH_SIZE = 32
PRIOR_LR = 2e-3
PRIOR_TIMESTEPS = 1000  # the linear β schedule's length
