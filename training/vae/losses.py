"""The VAE objective: reconstruction + β·KL, and the optional perceptual and adversarial terms.

Per image, with x ∈ [−1, 1]^(C×H×W), the posterior q(z|x) = N(μ, σ²) and x̂ = D(z), z ~ q (Kingma & Welling, 2014):

    L = ( Σ_pixels ℓ(x, x̂) + β · KL(q(z|x) ‖ N(0, I)) ) / (C·H·W)  [+ λ_p · L_perceptual + λ_adv · L_G]

ℓ is |x − x̂| (``l1``) or (x − x̂)² (``l2``); KL = ½ Σ_latent (μ² + σ² − 1 − log σ²). Dividing both sums by
the pixel count keeps the ratio β of the LDM KL-f VAEs (Rombach et al., 2022, App. G: β = 1e-6 on a
per-image *summed* reconstruction term), so ``--kl_weight 1e-6`` means what it means there, while the
loss reads as a per-pixel error. The adversarial term is the hinge loss of a PatchGAN discriminator
trained from scratch (Isola et al., 2017; Esser et al., 2021): D minimises E[relu(1 − D(x))] +
E[relu(1 + D(x̂))], the VAE adds λ_adv · (−E[D(x̂)]) from ``--adversarial_start_step`` on (a fixed weight,
not VQGAN's adaptive one). The perceptual term is the mean squared distance of a frozen feature
network's features of x and x̂; here only networks that need no download (the digits CNN of
``scratch_diffusion.metrics``, or the user's own plug-in module).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

RECONSTRUCTION_LOSSES = ("l1", "l2")


class AutoencoderForTraining(nn.Module):
    """``vae`` with a forward that returns what the loss needs: (x̂, μ, log σ²).

    ``AutoencoderKL.forward`` returns only x̂; this wrapper is what ``accelerator.prepare`` wraps (DDP
    syncs the gradients of a module's forward), so the posterior parameters come out of the same call.
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.sample(generator=generator)
        return self.vae.decode(latents).sample, posterior.mean, posterior.logvar


def reconstruction_loss(images: torch.Tensor, reconstructions: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over the batch of each image's Σ_pixels ℓ(x, x̂) / (C·H·W), in float32."""
    if kind not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"reconstruction loss {kind!r}; allowed: {', '.join(RECONSTRUCTION_LOSSES)}.")
    difference = reconstructions.float() - images.float()
    return (difference.abs() if kind == "l1" else difference.square()).mean()


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor, num_pixels: int) -> torch.Tensor:
    """Mean over the batch of KL(N(μ, σ²) ‖ N(0, I)), summed over the latent, divided by ``num_pixels``."""
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).flatten(1).sum(dim=1)
    return kl.mean() / num_pixels


class PatchDiscriminator(nn.Module):
    """A PatchGAN discriminator: real/fake logits for overlapping patches, not one per image (Isola et al., 2017).

    ``num_layers`` stride-2 4×4 convolutions (channels ×2 each, at most ×8) with GroupNorm and LeakyReLU(0.2),
    a stride-1 one, then a 1-channel 4×4 convolution; an image side R gives patches of side ≈ R / 2^num_layers − 2.
    """

    def __init__(self, in_channels: int, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, num_layers + 1):
            wider = channels * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(width, wider, 4, stride, 1), nn.GroupNorm(min(32, wider // 4), wider)]
            layers.append(nn.LeakyReLU(0.2))
            width = wider
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def min_discriminator_resolution(num_layers: int) -> int:
    """The smallest image side a :class:`PatchDiscriminator` of ``num_layers`` maps to ≥ 1 patch: 2^(layers+1)."""
    return 2 ** (num_layers + 1)


def default_discriminator_layers(resolution: int) -> int:
    """3 (the usual PatchGAN) where the resolution allows, fewer for small images; at least 1."""
    return max(1, min(3, int(math.log2(max(resolution, 1))) - 2))


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """E[relu(1 − D(x))] + E[relu(1 + D(x̂))] (the hinge GAN loss of the discriminator)."""
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−E[D(x̂)]: the VAE's side of the hinge GAN loss."""
    return -fake_logits.float().mean()


class PerceptualDistance(nn.Module):
    """Mean squared distance between frozen ``features(x)`` and ``features(x̂)``, differentiable in x̂."""

    def __init__(self, features: nn.Module | object, name: str):
        super().__init__()
        self.features, self.name = features, name
        if isinstance(features, nn.Module):
            features.requires_grad_(False).eval()

    def forward(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = torch.as_tensor(self.features(images.float()))
        return F.mse_loss(torch.as_tensor(self.features(reconstructions.float())).float(), target.float())


class _DigitsCNNFeatures(nn.Module):
    """The digits CNN's penultimate features with gradients (the metric's extractor runs under no_grad)."""

    def __init__(self):
        super().__init__()
        from scratch_diffusion.metrics import load_digits_classifier

        self.model = load_digits_classifier().model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The layout of metrics.to_classifier_input (channel mean, antialiased resize), which detaches its input.
        from scratch_diffusion.metrics import RESOLUTION

        x = images.float().mean(dim=1, keepdim=True)
        if x.shape[-2:] != (RESOLUTION, RESOLUTION):
            x = F.interpolate(x, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False, antialias=True)
        return self.model.features(x)


def load_perceptual_distance(name: str, device: torch.device, image_shape: tuple[int, int, int]) -> PerceptualDistance:
    """The perceptual term in the feature space ``name``: ``digits`` or a ``module:callable`` plug-in.

    Raises ``ValueError`` for another name (a transformers backbone would need its weights and runs
    without gradients here) and for a plug-in whose features carry no gradient.
    """
    from scratch_diffusion.metrics.feature_spaces import DIGITS, feature_extractor, is_plugin_name

    if name == DIGITS:
        network = _DigitsCNNFeatures()
    elif is_plugin_name(name):
        network = feature_extractor(name, device=device)
    else:
        raise ValueError(
            f"--perceptual_features {name!r}; allowed: {DIGITS!r} (the offline digits CNN) or a differentiable "
            "'package.module:callable' feature network of your own."
        )
    if isinstance(network, nn.Module):
        network.to(device)
    distance = PerceptualDistance(network, name)
    probe = torch.zeros(2, *image_shape, device=device, requires_grad=True)
    features = torch.as_tensor(network(probe))
    if not features.requires_grad:
        raise ValueError(f"--perceptual_features {name!r}: its features carry no gradient (computed under no_grad?).")
    return distance


class VAELoss:
    """The VAE's side of the objective (module docstring); ``critic`` is the discriminator, or None before it starts."""

    def __init__(self, reconstruction: str, kl_weight: float, perceptual: PerceptualDistance | None = None,
                 perceptual_weight: float = 0.0, adversarial_weight: float = 0.0):  # fmt: skip
        self.reconstruction, self.kl_weight = reconstruction, kl_weight
        self.perceptual, self.perceptual_weight = perceptual, perceptual_weight
        self.adversarial_weight = adversarial_weight

    def __call__(self, model: nn.Module, images: torch.Tensor, generator: torch.Generator, critic: nn.Module | None):
        """(loss, {term: detached value}, x̂) for one micro-batch; z is drawn from q(z|x) with ``generator``."""
        reconstructions, mean, logvar = model(images, generator=generator)
        terms = {
            "reconstruction": reconstruction_loss(images, reconstructions, self.reconstruction),
            "kl": kl_divergence(mean, logvar, images[0].numel()),
        }
        loss = terms["reconstruction"] + self.kl_weight * terms["kl"]
        if self.perceptual is not None:
            terms["perceptual"] = self.perceptual(images, reconstructions)
            loss = loss + self.perceptual_weight * terms["perceptual"]
        if critic is not None:
            critic.requires_grad_(False)  # the VAE's adversarial gradient must not reach the discriminator
            try:
                terms["adversarial"] = generator_adversarial_loss(critic(reconstructions))
            finally:
                critic.requires_grad_(True)
            loss = loss + self.adversarial_weight * terms["adversarial"]
        return loss, {name: value.detach() for name, value in terms.items()}, reconstructions
