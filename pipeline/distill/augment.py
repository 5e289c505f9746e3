"""DINOv2 multi-crop augmentation of H&E tiles, every random draw taken from one caller-given generator.

Crops are a pure function of the tile and the generator's state. The training
stream seeds one generator per sample from its position in the stream, so a
resumed run, or a run split over another number of processes, sees exactly
the same crops. Crops stay uint8 ``[H, W, 3]``: normalisation is left to the
accelerator, where it costs nothing, and uint8 batches cross process
boundaries at a quarter of the size of float ones.

Each crop goes through DINOv2's chain (random resized crop, flips, colour
jitter, grayscale, Gaussian blur, optional solarisation) plus vertical flips
and 90° rotations, which a tissue section has no reason to be invariant to
less than to horizontal flips. Every probability means what it says: DINOv2's
``GaussianBlur`` wrapper passed ``1 - p`` to ``RandomApply``, so its "1.0,
0.1, 0.5" blur rates were really 0, 0.9 and 0.5; here they are 1.0, 0.1 and
0.5, and the tests measure them.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from pipeline.distill.config import MultiCropConfig

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


def _happens(p: float, generator: torch.Generator) -> bool:
    """True with probability ``p`` exactly: never for 0, always for 1 (the draw lies in [0, 1))."""
    return bool(torch.rand((), generator=generator, dtype=torch.float64) < p)


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """An integer in ``[low, high)``."""
    return int(torch.randint(low, high, (), generator=generator))


def crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random crop of ``scale`` × the area and ``ratio`` width/height.

    torchvision's ``RandomResizedCrop.get_params``, drawing from ``generator``:
    ten tries, then a centre crop at the closest allowed ratio.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(*scale, generator)
        aspect = math.exp(_uniform(*log_ratio, generator))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top, left = _randint(0, height - crop_h + 1, generator), _randint(0, width - crop_w + 1, generator)
            return top, left, crop_h, crop_w
    if width / height < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        crop_w, crop_h = round(height * ratio[1]), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class MultiCrop:
    """Two global and ``local_crops_number`` local crops of a tile, as DINOv2 trains on.

    Global crop ``i`` is blurred with probability ``global_blur_p[i]`` and
    solarised with ``global_solarize_p[i]``; local crops with ``local_blur_p``.
    """

    def __init__(self, config: MultiCropConfig) -> None:
        self.config = config

    def __call__(self, tile: torch.Tensor, generator: torch.Generator) -> dict[str, list[torch.Tensor]]:
        """Crops of ``tile`` (uint8 ``[H, W, 3]``), a function of ``tile`` and ``generator``'s state only.

        Returns ``global_crops``, two uint8 ``[S, S, 3]``, and ``local_crops``, ``n`` uint8 ``[s, s, 3]``.
        """
        config = self.config
        image = tile.permute(2, 0, 1)  # torchvision works on [3, H, W]; a view, no copy
        global_crops = [
            self._crop(image, config.global_crop_size, config.global_crops_scale, blur_p, solarize_p, generator)
            for blur_p, solarize_p in zip(config.global_blur_p, config.global_solarize_p)
        ]
        local_crops = [
            self._crop(image, config.local_crop_size, config.local_crops_scale, config.local_blur_p, 0.0, generator)
            for _ in range(config.local_crops_number)
        ]
        return {"global_crops": global_crops, "local_crops": local_crops}

    def _crop(
        self,
        image: torch.Tensor,
        size: int,
        scale: tuple[float, float],
        blur_p: float,
        solarize_p: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """One augmented crop of ``image`` ``[3, H, W]`` as ``[size, size, 3]`` uint8."""
        config = self.config
        image_height, image_width = image.shape[-2:]
        top, left, height, width = crop_box(image_height, image_width, scale, config.crops_ratio, generator)
        if (height, width) == (size, size):  # nothing to resample: an exact copy, not an interpolated one
            crop = image[:, top : top + height, left : left + width]
        else:
            crop = F.resized_crop(
                image,
                top,
                left,
                height,
                width,
                [size, size],
                interpolation=_INTERPOLATION[config.interpolation],
                antialias=True,
            )
        if _happens(config.hflip_p, generator):
            crop = F.horizontal_flip(crop)
        if _happens(config.vflip_p, generator):
            crop = F.vertical_flip(crop)
        if _happens(config.rot90_p, generator):
            # An exact pixel permutation; F.rotate would resample a square through an affine grid.
            crop = torch.rot90(crop, _randint(1, 4, generator), dims=(-2, -1))
        if _happens(config.color_jitter_p, generator):
            crop = self._jitter(crop, generator)
        if _happens(config.grayscale_p, generator):
            crop = F.rgb_to_grayscale(crop, num_output_channels=3)
        if _happens(blur_p, generator):
            sigma = _uniform(*config.blur_sigma, generator)
            crop = F.gaussian_blur(crop, [config.blur_kernel_px] * 2, [sigma, sigma])
        if _happens(solarize_p, generator):
            crop = F.solarize(crop, config.solarize_threshold)
        return crop.permute(1, 2, 0).contiguous()

    def _jitter(self, crop: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Torchvision's ``ColorJitter``: the four adjustments in a random order, each with a random strength."""
        config = self.config
        adjustments = []
        for strength, adjust in (
            (config.brightness, F.adjust_brightness),
            (config.contrast, F.adjust_contrast),
            (config.saturation, F.adjust_saturation),
        ):
            if strength > 0:
                adjustments.append((adjust, _uniform(max(0.0, 1 - strength), 1 + strength, generator)))
        if config.hue > 0:
            adjustments.append((F.adjust_hue, _uniform(-config.hue, config.hue, generator)))
        for index in torch.randperm(len(adjustments), generator=generator).tolist():
            adjust, factor = adjustments[index]
            crop = adjust(crop, factor)
        return crop
