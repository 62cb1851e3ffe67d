"""What an extract job of the service may ask for, decided before it starts.

A job's options come from an allow-list: a model whose weights are on this machine (or random
weights), weights by name ('default', 'random' or a file in --weights-root), the local engine, and
image size, batch size and workers within the limits the server was started with. Its peak
memory is estimated from the model's measured activations and refused (422, with the numbers)
when it exceeds --job-memory."""

from __future__ import annotations

import logging
import os
import threading
from functools import lru_cache
from pathlib import Path

from featx.errors import FeatxError, InputError
from featx.options import ExtractOptions, ServeOptions

log = logging.getLogger(__name__)

GIB = 2**30
RUNTIME_BYTES = 1 * GIB  # a job process before its first batch: Python, torch, the network's code (measured ~0.9 GiB)
_PROFILE_LOCK = threading.Lock()


class JobRefused(InputError):
    """422: a job asks for more than the server allows; the message has the numbers."""


def job_memory_bytes(options: ServeOptions) -> int:
    """--job-memory in bytes; default: half of this machine's memory."""
    if options.job_memory_gb is not None:
        return int(options.job_memory_gb * GIB)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 * GIB
    return total // 2


def weights_file(name: str, options: ServeOptions) -> Path:
    """A weights file named in a job: a plain file name inside --weights-root, nothing else."""
    root = options.weights_root
    if root is None:
        raise JobRefused(f"weights '{name[:100]}' refused: this server takes only 'default' or 'random' weights "
                         "(start it with --weights-root DIR to allow the weight files in DIR by name)")
    if name != Path(name).name or name in ("", ".", ".."):
        raise JobRefused(f"weights '{name[:100]}' refused: name a file in the server's --weights-root by its "
                         "file name alone (no folders)")
    path = Path(root) / name
    if not path.is_file() or not path.resolve().is_relative_to(Path(root).resolve()):
        available = sorted(p.name for p in Path(root).iterdir() if p.is_file())[:20] if Path(root).is_dir() else []
        raise JobRefused(f"weights '{name}' refused: no such file in the server's --weights-root; available: "
                         f"{', '.join(available) or 'none'}")
    return path


def check_job(options: ExtractOptions, server: ServeOptions) -> dict:
    """Refuse what a job may not ask for; returns the job's extract options (weights resolved)
    and its memory estimate."""
    from featx.backbones import TIMM_PREFIX, resolve_family

    refused = []
    if options.engine != "local" or options.ray_address is not None:
        refused.append("engine must be 'local' (jobs run on this server)")
    if options.compile:
        refused.append("compile is not allowed in jobs")
    for field, limit, flag in (("image_size", server.job_max_image_size, "--job-max-image-size"),
                               ("batch_size", server.job_max_batch, "--job-max-batch"),
                               ("workers", server.job_max_workers, "--job-max-workers")):
        value = getattr(options, field)
        if value is not None and value > limit:
            refused.append(f"{field} {value} is above this server's limit of {limit} ({flag})")
    if refused:
        raise JobRefused("job refused: " + "; ".join(refused))
    try:
        family = resolve_family(options.model)
    except FeatxError as exc:
        raise JobRefused(f"job refused: {exc}") from None
    chosen = options.model_dump(exclude_none=True)
    if options.weights == "default":
        try:
            offline = family.cached_weights(options.model) is not None
        except Exception:  # noqa: BLE001 - a model without default weights
            offline = False
        if not offline:
            raise JobRefused(f"job refused: the default weights of '{options.model}' are not on this server (it never "
                             "downloads); use a model `featx models` marks offline, weights 'random', or a file "
                             "in --weights-root")
    elif options.weights != "random":
        chosen["weights"] = str(weights_file(options.weights, server))
    if options.model.startswith(TIMM_PREFIX) and options.weights == "random":
        raise JobRefused("job refused: timm models run in jobs only with weights on this server")
    chosen["memory"] = estimate_memory(options, server)
    return chosen


def estimate_memory(options: ExtractOptions, server: ServeOptions) -> dict:
    """Peak bytes ≈ runtime + weights + batch × views × size² × (the model's activation bytes
    per input pixel + the decoded input); refused above --job-memory."""
    params, per_pixel, crop = activation_profile(options.model)
    size = options.image_size or crop
    views = options.batch_size * options.tta
    activations = int(views * size * size * (per_pixel + 3 * (1 + 4)))  # + the uint8 and float32 input tensors
    peak = RUNTIME_BYTES + params + activations
    limit = job_memory_bytes(server)
    numbers = {"estimated_bytes": peak, "limit_bytes": limit, "batch_size": options.batch_size, "tta": options.tta,
               "image_size": size, "activation_bytes_per_pixel": round(per_pixel, 1), "weights_bytes": params}
    if peak > limit:
        raise JobRefused(f"job refused: its estimated peak memory is {peak / GIB:.1f} GiB (batch {options.batch_size} "
                         f"× {options.tta} views × {size}² px × {per_pixel:,.0f} bytes of activations per pixel, "
                         f"+ {params / GIB:.2f} GiB of weights + {RUNTIME_BYTES / GIB:.0f} GiB runtime), above this "
                         f"server's --job-memory of {limit / GIB:.1f} GiB; lower batch_size or image_size")
    return numbers


@lru_cache(maxsize=64)
def activation_profile(model: str) -> tuple[int, float, int]:
    """(weight bytes, activation bytes per input pixel, default crop): one forward pass of one image
    at the weights' crop size, summing every leaf module's output, on torch's `meta` device (shapes
    only: no memory and no arithmetic, so even a huge network costs nothing to measure)."""
    import torch

    from featx.backbones import resolve_family

    with _PROFILE_LOCK:
        family = resolve_family(model)
        with torch.device("meta"):
            net = family.build(model).eval()
        crop = int(family.preprocess(model).crop_size)
        params = sum(p.numel() * p.element_size() for p in net.parameters())
        total = [0]

        def count(_module, _inputs, output):
            for tensor in output if isinstance(output, (tuple, list)) else [output]:
                if isinstance(tensor, torch.Tensor):
                    total[0] += tensor.numel() * tensor.element_size()

        handles = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
        try:
            with torch.inference_mode():
                net(torch.zeros(1, 3, crop, crop, device="meta"))
        except Exception as exc:  # noqa: BLE001 - a network that takes no image of its own crop size
            raise JobRefused(f"job refused: '{model}' cannot run on {crop}×{crop} images, its weights' size "
                             f"({type(exc).__name__}); choose another model") from None
        finally:
            for handle in handles:
                handle.remove()
    log.info("job memory profile of %s: %.1f MiB weights, %.0f activation bytes per pixel", model, params / 2**20,
             total[0] / crop**2)
    return params, total[0] / crop**2, crop
