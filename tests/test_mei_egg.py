"""EGG (survey.mei.egg) and its diffusion prior (survey.mei.prior): the guidance gradient against finite differences,
unguided sampling against diffusers' own DDPM sampler, training, the shipped prior's power spectrum against that of
natural patches, a reconstruction against noise, and priors that cannot load."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from survey.config import DEMO_CONFIG, load_config
from survey.errors import SurveyError
from survey.mei.comparison import paired_comparison
from survey.mei.egg import Adapter, NonFiniteEnergyError, energy_guided_diffusion, guidance, sampling_steps
from survey.mei.prior import (
    TrainedPrior,
    diffusers_prior,
    load_diffusers_prior,
    prior_patches,
    radial_power_slope,
    save_prior,
    train_prior,
    unet_config,
)
from survey.priors import shipped_prior

LIMITS = {"none": {"clip_sample": False}, "clip": {"clip_sample": True},
          "dynamic": {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0}}


def random_prior(size: int = 8, dtype: torch.dtype = torch.float32, limit: str = "none"):
    torch.manual_seed(0)
    unet = UNet2DModel(**unet_config(size, 1, (8, 16))).to(dtype).eval().requires_grad_(False)
    return diffusers_prior(unet, dict(DDPMScheduler(num_train_timesteps=1000, **LIMITS[limit]).config))


def linear_energy(shape: tuple[int, int, int], seed: int = 1):
    weights = torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return lambda images: -(images * weights.to(images.dtype)).flatten(1).sum(1) - images.pow(3).flatten(1).sum(1)


@pytest.mark.parametrize("limit", ["none", "dynamic"])
def test_the_guidance_gradient_is_the_energys_derivative_through_one_sampling_step(limit):
    prior = random_prior(dtype=torch.float64, limit=limit)
    adapt = Adapter((3, 12, 12), norm=5.0)  # resized, grey → RGB, projected: all inside the derivative
    energy = linear_energy((3, 12, 12))
    for step in sampling_steps(prior, 10)[::3]:
        noisy = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(step.timestep), dtype=torch.float64)
        _, values, gradient = guidance(prior, step, noisy, energy, adapt)

        def total(x: torch.Tensor, step=step) -> float:
            t = torch.full((len(x),), step.timestep)
            return float(energy(adapt(prior.threshold(step.predict_clean(x, prior.denoiser(x, t))))).sum())

        for seed in range(3):
            direction = torch.randn(noisy.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            h = 1e-5
            numeric = (total(noisy + h * direction) - total(noisy - h * direction)) / (2 * h)
            assert float((gradient * direction).sum()) == pytest.approx(numeric, rel=1e-6, abs=1e-9)
        assert float(values.sum()) == pytest.approx(total(noisy), rel=1e-12)


@pytest.mark.parametrize("limit", list(LIMITS))
def test_with_no_energy_egg_samples_exactly_what_diffusers_ddpm_sampler_does(limit):
    prior = random_prior(limit=limit)
    ours = energy_guided_diffusion(linear_energy((1, 8, 8)), prior, 4, adapt=lambda x: x, steps=20, energy_scale=0.0,
                                   generator=torch.Generator().manual_seed(7))
    scheduler = DDPMScheduler(num_train_timesteps=1000, **LIMITS[limit])
    scheduler.set_timesteps(20)
    generator = torch.Generator().manual_seed(7)
    sample = torch.randn((4, 1, 8, 8), generator=generator)
    for t in scheduler.timesteps:
        noise = prior.denoiser(sample, torch.full((4,), int(t)))
        sample = scheduler.step(noise, t, sample, generator=generator).prev_sample
    np.testing.assert_allclose(ours.images.numpy(), sample.numpy(), rtol=1e-4, atol=1e-5)
    assert ours.history.shape == (20, 4)


def test_guidance_lowers_the_energy_and_scale_zero_leaves_the_statistics_of_plain_samples():
    prior = random_prior()
    energy = linear_energy((1, 8, 8))
    runs = {scale: energy_guided_diffusion(energy, prior, 64, adapt=lambda x: x, steps=25, energy_scale=scale,
                                           generator=torch.Generator().manual_seed(3)) for scale in (0.0, 1.0)}
    assert float(runs[1.0].energy.mean()) < float(runs[0.0].energy.mean())
    plain = energy_guided_diffusion(lambda x: x.new_zeros(len(x)), prior, 64, adapt=lambda x: x, steps=25,
                                    energy_scale=0.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(runs[0.0].images, plain.images)


@pytest.fixture(scope="module")
def shipped() -> TrainedPrior:
    """The prior the package ships: what the `prior` stage trains by the demo's recipe (RGB, 32 px)."""
    settings = load_config(DEMO_CONFIG).prior
    found = shipped_prior(settings.recipe(), 32)
    assert found is not None, "the package ships the demo recipe's prior (python -m survey.priors builds it)"
    return found[0].trained


def test_training_lowers_the_denoising_loss_and_is_seeded():
    patches = prior_patches(200, 8, seed=0)
    runs = [train_prior(patches, widths=(8, 16), steps=60, seed=seed) for seed in (0, 0, 1)]
    losses = runs[0].losses
    assert losses.shape == (60,) and losses[-10:].mean() < 0.5 * losses[:10].mean()
    np.testing.assert_array_equal(runs[0].losses, runs[1].losses)
    assert not np.array_equal(runs[0].losses, runs[2].losses)


def test_the_shipped_prior_makes_images_with_the_power_spectrum_of_natural_patches(shipped):
    samples = energy_guided_diffusion(lambda x: x.new_zeros(len(x)), shipped.prior(), 64, adapt=lambda x: x,
                                      steps=250, energy_scale=0.0, generator=torch.Generator().manual_seed(0)).images
    patches = prior_patches(2048, 32, seed=1, channels=3)  # other patches than it was trained on
    noise = np.random.default_rng(0).standard_normal((64, 32, 32))
    slopes = {"patches": radial_power_slope(patches.mean(axis=1)), "noise": radial_power_slope(noise),
              "samples": radial_power_slope(samples.mean(dim=1).numpy())}  # of the luminance (channel mean)
    print("radial power spectrum slopes:", {k: round(v, 2) for k, v in slopes.items()})
    assert abs(slopes["samples"] - slopes["patches"]) <= 0.3
    assert abs(slopes["noise"]) < 0.3 and slopes["patches"] < -1.5
    assert shipped.losses[-100:].mean() < 0.5 * shipped.losses[:100].mean()


def test_egg_reconstructs_a_held_out_image_from_its_responses_better_than_noise(shipped):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Flatten())  # a random V1
    image = torch.from_numpy(prior_patches(40, 32, seed=99, channels=3)[-1:])  # a patch the prior never saw
    adapt = Adapter((3, 32, 32), norm=float(image.norm()))
    target = model(adapt(image)).detach()

    def energy(images):
        return ((model(images) - target) ** 2).mean(dim=1)

    result = energy_guided_diffusion(energy, shipped.prior(), 4, adapt=adapt, steps=100, energy_scale=1.0,
                                     generator=torch.Generator().manual_seed(0))
    noise = torch.randn((200, 3, 32, 32), generator=torch.Generator().manual_seed(1))

    def correlation(images):
        centred = images.flatten(1) - images.flatten(1).mean(1, keepdim=True)
        reference = image.flatten() - image.mean()
        return (centred @ reference) / (centred.norm(dim=1) * reference.norm())

    egg, baseline = correlation(result.images), correlation(noise)
    print(f"reconstruction r with the image: EGG {egg.mean():.3f} (each {egg.numpy().round(3)}), "
          f"noise {baseline.mean():.3f} ± {baseline.std():.3f}")
    assert float(egg.min()) > float(baseline.mean() + 3 * baseline.std())


def test_a_saved_prior_loads_offline_and_a_folder_missing_files_is_named(shipped, tmp_path):
    save_prior(shipped.unet, shipped.scheduler_config, tmp_path / "prior")
    loaded = load_diffusers_prior(tmp_path / "prior")
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    torch.testing.assert_close(loaded.denoiser(x, t), shipped.prior().denoiser(x, t))
    torch.testing.assert_close(loaded.alphas_cumprod, shipped.prior().alphas_cumprod)
    (tmp_path / "prior" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(SurveyError, match=r"lacks unet/diffusion_pytorch_model\.safetensors") as error:
        load_diffusers_prior(tmp_path / "prior")
    assert "\n" not in str(error.value)


def test_a_nan_energy_is_named_by_image_and_timestep():
    def energy(images):
        values = images.flatten(1).sum(1)
        return torch.where(torch.arange(len(images)) == 1, torch.nan, values)

    with pytest.raises(NonFiniteEnergyError, match=r"not finite for images \[1\] at timestep 990") as error:
        energy_guided_diffusion(energy, random_prior(), 3, adapt=lambda x: x, steps=100,
                                generator=torch.Generator().manual_seed(0))
    assert error.value.images == [1]


def test_the_paired_comparison_counts_targets_and_tests_the_differences_by_wilcoxon():
    from scipy.stats import wilcoxon

    ga = np.array([10.0, 8.0, 5.0, 4.0, -1.0, np.nan, 3.0])
    egg = np.array([9.0, 6.0, 5.5, 2.0, 1.0, 7.0, 2.9])
    result = paired_comparison(ga, egg)
    kept = ~np.isnan(ga)
    assert result["n"] == 6
    assert result["ga_mean"] == pytest.approx(ga[kept].mean()) and result["egg_mean"] == pytest.approx(egg[kept].mean())
    ratios = np.array([0.9, 0.75, 1.1, 0.5, 2.9 / 3.0])  # over targets where GA is positive
    assert result["median_ratio"] == pytest.approx(np.median(ratios))
    assert result["at_least_80pct"] == pytest.approx(3 / 5)
    assert result["egg_wins"] == pytest.approx(2 / 6)
    assert result["wilcoxon_p"] == pytest.approx(wilcoxon(egg[kept], ga[kept]).pvalue)
    assert paired_comparison(np.array([np.nan]), np.array([1.0]))["n"] == 0
