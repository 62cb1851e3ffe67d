"""The batched inference loop: reader (decode + views, in DataLoader workers), extractor (one
forward pass for all layers, pooling, TTA averaging) and writer (the feature store)."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from featx.backbones import Preprocess, load_backbone
from featx.backbones.layers import FINAL, LayerTap, addressable_layers, default_layer, default_layers, output_formats
from featx.backbones.pooling import check_pool_name, check_pool_with_tta, check_pooling, pool
from featx.errors import InputError, WeightsError
from featx.io.decode import DecodeError, read_bytes
from featx.options import EXTRACT
from featx.preprocess.config import check_resize
from featx.preprocess.contract import device_network_inputs, network_input
from featx.preprocess.device import plain_jpeg
from featx.preprocess.views import PIXEL_SIDE, PIXEL_TOLERANCE, PIXELS, check_tta, normalise, pixel_vectors
from featx.runtime import torch_threads, usable_cores

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_MODES = ("none", "bf16", "fp16")
DTYPES = ("float32", "float16")
# bump when the pixels fed to the network change for the same settings: old stores are then refused.
# /2: JPEG draft scale for every resize mode, Pillow reduce-then-resample, 16-bit stretched by its own range
# pil /3: the draft scale keeps 1.5x the view (DRAFT_MARGIN); the letterbox is sized from the full image
# torch /3: the kept region is cut out before resizing, and equal-size regions are resized in one call
PREPROCESS_IMPLEMENTATION = {"pil": "pil-draft-reduce/3", "torch": "torchvision-decode-resize/3"}
DECODERS = ("auto", "pil", "torch")


def cpu_bf16_supported(device: torch.device) -> bool:
    """bfloat16 autocast pays on a CPU only with native bf16 instructions (oneDNN); emulated it is slower."""
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise InputError(f"unknown --device '{device}'; allowed: {', '.join(DEVICES)}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available here; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps was asked for but MPS is not available here; use --device cpu or auto")
    return torch.device(device)


# --- reader ------------------------------------------------------------------------------------

class ImageViews(Dataset):
    """Item i: the file's views as uint8, or the reason it failed. Never raises for a bad file."""

    def __init__(self, paths: Sequence[str], preprocess: Preprocess, tta: int, decode: str = "pil",
                 ready: dict[str, dict] | None = None):
        self.paths = list(paths)
        self.preprocess = preprocess
        self.tta = tta
        self.decode = decode  # "torch": plain JPEGs travel as bytes, decoded on the extraction device
        self.ready = ready  # path -> {"views", "sha256"} decoded ahead (featx.extract.head_start); taken once

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        item = {"index": i, "views": None, "jpeg": None, "sha256": None, "status": "ok", "error": None}
        early = self.ready.pop(self.paths[i], None) if self.ready else None
        if early is not None:
            item["views"], item["sha256"] = torch.from_numpy(early["views"]), early["sha256"]
            return item
        try:
            data, item["sha256"] = read_bytes(self.paths[i])
            if self.decode == "torch" and plain_jpeg(data):
                item["jpeg"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                return item
            item["views"] = network_input(data, self.preprocess, self.tta)
        except DecodeError as exc:
            item["status"], item["error"] = exc.code, exc.message
        except Exception as exc:  # anything else a hostile file triggers still loses only this file
            item["status"], item["error"] = "decode_error", f"{type(exc).__name__}: {exc}"
        return item


def _worker_init(_worker_id: int) -> None:
    # Decoding yields to the forward pass: on a small CPU a decoding worker that preempts one of
    # torch's threads stalls every parallel op of the batch, costing more than the decode itself.
    try:
        os.nice(int(os.environ.get("FEATX_WORKER_NICE", "10")))
    except OSError:
        pass


def collate(items: list[dict]) -> dict:
    """Views decoded in the worker are concatenated; JPEG bytes stay a list for the device decoder."""
    good = [it["views"] for it in items if it["views"] is not None]
    return {"items": [{k: v for k, v in it.items() if k not in ("views", "jpeg")} for it in items],
            "views": torch.cat(good) if good else None,
            "jpeg": [it["jpeg"] for it in items]}


# --- extractor ---------------------------------------------------------------------------------

@dataclass
class Batch:
    indices: list[int]  # positions in the paths given to `run`
    meta: list[dict]  # sha256, status, error per index
    features: dict[str, np.ndarray]  # layer -> (len(indices), D); NaN rows for failed files


class Extractor:
    """A backbone with its layers, pooling and views: images in, vectors out."""

    def __init__(self, model: str = EXTRACT.model, *, weights: str = EXTRACT.weights,
                 layers: Sequence[str] | None = EXTRACT.layers, pool: str = EXTRACT.pool,
                 image_size: int | None = EXTRACT.image_size, tta: int = EXTRACT.tta, device: str = EXTRACT.device,
                 amp: str = EXTRACT.amp, dtype: str = EXTRACT.dtype, batch_size: int = EXTRACT.batch_size,
                 workers: int | None = EXTRACT.workers, per_view: bool = False, decode: str = "pil",
                 resize: str = EXTRACT.resize, cores: int | None = None, compile: bool = EXTRACT.compile):
        """`per_view=True` keeps the TTA views apart: features are (N, views, D) instead of the mean.
        `resize`: crop | full | pad (see `featx.preprocess.views`). `workers`: None picks the fastest plan for
        the device and core count (`decode_plan`); 0 decodes in this process; N > 0 uses N
        DataLoader worker processes. `cores`: the cores this extractor may use (None: every core
        this process may run on; a Ray actor passes its own share). `compile=True` runs the network
        through `torch.compile` (Inductor): ~1.3x faster on a CPU after a compilation of tens of
        seconds, so it pays on long runs only (benchmarks/cpu_modes.py); every batch is padded to
        `batch_size` so that one compiled shape serves the whole run."""
        if amp not in AMP_MODES:
            raise InputError(f"unknown --amp '{amp}'; allowed: {', '.join(AMP_MODES)}")
        if dtype not in DTYPES:
            raise InputError(f"unknown --dtype '{dtype}'; allowed: {', '.join(DTYPES)}")
        if int(batch_size) < 1:
            raise InputError(f"--batch-size {batch_size} must be at least 1")
        self.device = resolve_device(device)
        if amp != "none" and self.device.type != "cuda" and not (amp == "bf16" and cpu_bf16_supported(self.device)):
            without = ", without it" if self.device.type == "cpu" else ""
            raise InputError(f"--amp {amp} needs a CUDA device, or --amp bf16 a CPU with native bfloat16 "
                             f"(AVX512-BF16 or AMX; this run uses {self.device.type}{without}); "
                             "use --amp none, where features are computed in float32")
        self.tta = check_tta(tta)
        check_pool_name(pool)
        check_pool_with_tta(pool, self.tta)
        check_resize(resize)
        self.amp, self.dtype, self.batch_size, self.per_view = amp, dtype, int(batch_size), per_view
        if decode not in DECODERS:
            raise InputError(f"unknown --decode '{decode}'; allowed: {', '.join(DECODERS)}")
        self.decode = ("torch" if self.device.type == "cuda" else "pil") if decode == "auto" else decode
        self.workers = None if workers is None else int(workers)
        self.cores = None if cores is None else max(1, int(cores))
        if self.workers is not None and self.workers < 0:
            raise InputError(f"--workers {workers} must be 0 (decode in this process) or more")
        self.backbone = load_backbone(model, weights, image_size)
        self.backbone.preprocess = self.backbone.preprocess.with_resize(resize)
        addressable = addressable_layers(self.backbone.model)
        self.layers = self._requested_layers(layers, model, addressable, pool)
        self.pool_name = pool
        identity = f"{self.backbone.weights_id}|{self.backbone.weights_sha256}"
        self.tap = LayerTap(self.backbone.model, self.network_layers, model, addressable,
                            image_size=self.backbone.preprocess.crop_size, identity=identity).eval()
        self.pooled_dims = self._probe_dims()
        self.tap = self.tap.to(self.device, memory_format=torch.channels_last)
        self.weights_source = weights
        self.compiled = torch.compile(self.tap, dynamic=False) if compile else None

    def _requested_layers(self, layers: Sequence[str] | None, model: str, addressable, pool: str) -> list[str]:
        """The stored layers: by default the final layer, the stage ends (`default_layers`) and the
        raw pixels (the baseline); `final` names the final layer."""
        network = self.backbone.model
        if not layers:
            size = self.backbone.preprocess.crop_size
            return [*default_layers(network, model, size, addressable, pool=pool), PIXELS]
        chosen = [default_layer(network, addressable) if layer == FINAL else layer for layer in layers]
        if len(set(chosen)) != len(chosen):
            raise InputError(f"--layer names a layer twice: {list(layers)} (`final` is "
                             f"'{default_layer(network, addressable)}' for {model}); give each layer once")
        return chosen

    @torch.inference_mode()
    def _probe_dims(self) -> dict[str, int]:
        """Each layer's output format (channels-first or -last), the pooling checked against each
        layer's shape, and the length of each layer's vector: from the shapes the lean-graph check
        saw (no extra forward pass), else from one dummy forward pass."""
        size = self.backbone.preprocess.crop_size
        shapes, layers = self.tap.probe_shapes, self.network_layers
        if shapes is not None and all(layer in shapes for layer in layers):
            outputs = {layer: torch.zeros((1, *shapes[layer])) for layer in layers}
        else:
            outputs = self.tap(torch.zeros(1, 3, size, size)) if layers else {}
        self.layer_formats = output_formats(self.tap, {layer: outputs[layer] for layer in layers}, size)
        dims = {PIXELS: 3 * PIXEL_SIDE * PIXEL_SIDE}
        for layer in layers:
            check_pooling(self.pool_name, layer, tuple(outputs[layer].shape[1:]))
            dims[layer] = int(pool(outputs[layer], self.pool_name, self.layer_formats[layer]).shape[-1])
        return {layer: dims[layer] for layer in self.layers}

    @property
    def network_layers(self) -> list[str]:
        """The stored layers the network computes (all but the pixels)."""
        return [layer for layer in self.layers if layer != PIXELS]

    @property
    def config(self) -> dict:
        """What determines the features; stored with them and checked wherever they are used."""
        return {
            "backbone": self.backbone.name,
            "weights_id": self.backbone.weights_id,
            "weights_sha256": self.backbone.weights_sha256,
            "layers": self.layers,
            "pool": self.pool_name,
            "preprocess": self.backbone.preprocess.to_dict() | {
                "implementation": PREPROCESS_IMPLEMENTATION[self.decode], "pixel_tolerance": PIXEL_TOLERANCE},
            "tta": self.tta,
            "dtype": self.dtype,
            "layer_formats": dict(self.layer_formats),
        }

    @torch.inference_mode()
    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled vectors per layer of (N * tta, 3, crop, crop) uint8 views (made by featx.preprocess.contract)."""
        x = views.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        x = normalise(x, self.backbone.preprocess)
        network, rows = self.tap, len(x)
        if self.compiled is not None:  # one shape for the whole run: a new shape would compile again
            network, full = self.compiled, self.batch_size * self.tta
            if rows < full:
                x = torch.cat([x, x.new_zeros((full - rows,
                                               *x.shape[1:]))]).contiguous(memory_format=torch.channels_last)
        if not self.network_layers:  # the pixels alone need no network
            outputs = {}
        elif self.amp != "none":
            with torch.autocast(self.device.type, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16):
                outputs = network(x)
        else:
            outputs = network(x)
        outputs = {layer: value[:rows] for layer, value in outputs.items()}
        pooled = {}
        if PIXELS in self.layers:
            pixels = pixel_vectors(views.to(self.device))
            pooled[PIXELS] = pixels.view(-1, self.tta, pixels.shape[-1])
            pooled[PIXELS] = pooled[PIXELS] if self.per_view else pooled[PIXELS].mean(1)
        for layer in self.network_layers:
            vectors = pool(outputs[layer], self.pool_name, self.layer_formats[layer]).float()
            views = vectors.view(-1, self.tta, vectors.shape[-1])
            pooled[layer] = views if self.per_view else views.mean(1)
        return pooled

    def run(self, paths: Sequence[str], batches: Sequence[Sequence[int]] | None = None,
            progress: bool = True, description: str = "extract", ready: dict[str, dict] | None = None
            ) -> Iterator[Batch]:
        """Features of `paths`, in batches (index lists into `paths`; default: consecutive).
        `ready`: views decoded ahead by path (`featx.extract.head_start`), used instead of decoding."""
        if batches is None:
            batches = [list(range(i, min(i + self.batch_size, len(paths)))) for i in range(0, len(paths),
                                                                                           self.batch_size)]
        dataset = ImageViews(paths, self.backbone.preprocess, self.tta, self.decode, ready)
        plan = decode_plan(self.device, self.workers, self.cores)
        total = sum(len(b) for b in batches)
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=description, unit="img", disable=not progress, dynamic_ncols=True) as bar, \
                torch_threads(plan.torch_threads):
            for batch in self._loader(dataset, batches, plan):
                items = batch["items"]
                views = self._device_views(batch) if any(j is not None for j in batch["jpeg"]) else batch["views"]
                ok = [k for k, it in enumerate(items) if it["status"] == "ok"]
                features = {}
                pooled = self.forward(views) if views is not None else {}
                for layer in self.layers:
                    dim = self.pooled_dims[layer]
                    shape = (len(items), self.tta, dim) if self.per_view else (len(items), dim)
                    array = np.full(shape, np.nan, dtype=self.dtype)
                    if ok:
                        array[ok] = pooled[layer].cpu().numpy().astype(self.dtype, copy=False)
                    features[layer] = array
                bar.update(len(items))
                yield Batch([it["index"] for it in items], items, features)

    def _loader(self, dataset: ImageViews, batches: Sequence[Sequence[int]], plan: "DecodePlan") -> Iterator[dict]:
        if plan.processes:
            yield from DataLoader(dataset, batch_sampler=batches, num_workers=plan.processes, collate_fn=collate,
                                  worker_init_fn=_worker_init if self.device.type == "cpu" else None,
                                  pin_memory=self.device.type == "cuda", persistent_workers=False, prefetch_factor=4)
            return
        # decode a batch with every core, then run the forward pass with every core: on a small CPU
        # the two never fight over a core, which is what keeps throughput near the limit
        with ThreadPoolExecutor(plan.threads, thread_name_prefix="featx-decode") as pool:
            for batch in batches:
                yield collate(list(pool.map(dataset.__getitem__, batch)))

    def _device_views(self, batch: dict) -> torch.Tensor | None:
        """Decode the batch's JPEG bytes on the device and merge their views, in item order, with
        the views the workers made; a JPEG that fails here turns its item into an error row."""
        items, jpegs = batch["items"], batch["jpeg"]
        positions = [k for k, blob in enumerate(jpegs) if blob is not None]
        # resized in batches of equal-size regions, not image by image
        results = device_network_inputs([jpegs[k] for k in positions], self.backbone.preprocess, self.tta, self.device)
        on_device = {}
        for k, result in zip(positions, results):
            if isinstance(result, DecodeError):
                items[k]["status"], items[k]["error"] = result.code, result.message
            else:
                on_device[k] = result
        worker_views = batch["views"].to(self.device) if batch["views"] is not None else None
        merged, taken = [], 0
        for k, item in enumerate(items):
            if k in on_device:
                merged.append(on_device[k])
            elif jpegs[k] is None and item["status"] == "ok":
                merged.append(worker_views[taken * self.tta:(taken + 1) * self.tta])
                taken += 1
        return torch.cat(merged) if merged else None

    def features_of(self, paths: Sequence[str], progress: bool = False) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
        """All features of `paths` in memory, with a metadata row (sha256, status, error) each."""
        layers: dict[str, list[np.ndarray]] = {layer: [] for layer in self.layers}
        rows = []
        for batch in self.run(paths, progress=progress):
            for layer in self.layers:
                layers[layer].append(batch.features[layer])
            rows.extend({"path": paths[i], **{k: it[k] for k in ("sha256", "status", "error")}}
                        for i, it in zip(batch.indices, batch.meta))
        empty = {layer: np.zeros((0, self.tta, d) if self.per_view else (0, d), self.dtype)
                 for layer, d in self.pooled_dims.items()}
        stacked = {layer: np.concatenate(v) if v else empty[layer] for layer, v in layers.items()}
        return stacked, pd.DataFrame(rows, columns=["path", "sha256", "status", "error"])


@dataclass(frozen=True)
class DecodePlan:
    processes: int  # DataLoader worker processes; 0: decode in this process
    threads: int  # decoding threads in this process (Pillow releases the GIL while decoding)
    torch_threads: int | None  # intra-op threads for the forward pass; None: leave torch's setting


def decode_plan(device: torch.device, workers: int | None, cores: int | None = None) -> DecodePlan:
    """How to share the cores between decoding and the forward pass.

    On the CPU, decoding and the forward pass take turns, each on every core: a decoder that runs
    beside the forward pass steals a core from one of torch's threads and stalls all the others
    at the next barrier, so overlapping them loses more than it gains (measured in
    benchmarks/extract_throughput.py). With an accelerator the CPU only decodes: worker processes
    on the cores left. An explicit `workers` is obeyed: N > 0 worker processes, 0 = one thread."""
    cores = cores or usable_cores()
    if workers is not None:
        return DecodePlan(processes=workers, threads=1, torch_threads=None)
    if device.type == "cpu":
        return DecodePlan(processes=0, threads=cores, torch_threads=cores)
    return DecodePlan(processes=max(1, min(8, cores - 1)), threads=1, torch_threads=None)  # cores left, 1..8


def extractor_from_config(config: dict, **runtime) -> Extractor:
    """Rebuild the extractor a store, model or index recorded, and prove it is the same one."""
    weights = config.get("weights_source", "default")
    implementation = str(config["preprocess"].get("implementation", ""))
    runtime.setdefault("decode", "torch" if implementation.startswith("torchvision") else "pil")
    runtime.setdefault("resize", config["preprocess"].get("resize", "crop"))  # stores before --resize cropped
    extractor = Extractor(config["backbone"], weights=weights, layers=config["layers"], pool=config["pool"],
                          image_size=config["preprocess"]["crop_size"], tta=runtime.pop("tta", config.get("tta", 1)),
                          dtype=config.get("dtype", "float32"), **runtime)
    if extractor.backbone.weights_sha256 != config.get("weights_sha256"):
        raise WeightsError(f"the weights loaded from '{weights}' (sha256 {extractor.backbone.weights_sha256}) are "
                           f"not the ones the features were made with (sha256 {config.get('weights_sha256')}); "
                           "make the same weights file available")
    return extractor
