"""The esd stage: the eigenvalues of every layer of one model, cached per layer.

Snakemake runs one job per model (per-layer jobs would make no-op reruns of big zoos
slow), and inside it each layer is a cache entry: ``{layer}.npy`` (the eigenvalues, one sorted row
per matrix) and ``{layer}.entry.json`` (its record, written last as the entry's commit marker). An entry
is reused when its key (the layer's weights hash and the spectrum settings) is unchanged, so a
rerun after a model changes recomputes only the layers whose weights changed. With ``randomize``
the entry also holds ``{layer}.rand.npy``: the eigenvalues of the same matrices with their entries
shuffled (the randomization check of docs/method.md), computed here because this stage has the weights. The entries are not
declared as Snakemake outputs on purpose: Snakemake deletes a job's outputs before running it.

A very large model can be split into K shards (zoo column ``shards``): shard k of K computes the
entries of its share of the layers (:func:`zooscope.resources.shard_layers`, balanced by work)
into the same folder, and :func:`merge_shards` assembles the index from the shards' indexes: the
same index, the same entries, as one unsharded job writes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from zooscope import io, resources
from zooscope.config import EsdSettings

from zooscope.spectra import spectrum
from zooscope.spectra.shared_cache import SharedStore

log = logging.getLogger(__name__)

# Bump when the eigenvalue computation changes, to invalidate every cache entry.
# 3: the shuffled spectra of ``randomize`` are computed in float32.
# 4: the Gram matrix's products in float32 blocks (config esd.gram), a new cache key field.
# 5: Gram matrices from M = 3072 on solved by the two-stage eigensolver (about 1e-14 apart).
# 6: its band 64 wide, not 32, and from M = 1792 on on AVX-512 kernels (about 2e-14 apart).
ESD_VERSION = 6
ENTRY_SUFFIX = ".entry.json"
RAND_SUFFIX = ".rand.npy"
# The fields of a record that the shared store keeps (the rest is the layer's, or the key's).
SHARED_FIELDS = ("slices", "N", "M")
# Layers whose matrices' short side M is below this are computed in parallel (compute_model_esd):
# up to M = 2048 a matrix per thread beats both threads on one (a 1.1B Llama's 5632 x 2048 layers:
# esd 41.3 -> 31.5 s on 2 cores); from 4096 on a layer's Gram products gain from all the threads
# (VGG16's 25088 x 4096 classifier: 1.0 s on two, 2 s on one), so large layers are batched.
PARALLEL_LAYERS_BELOW = 4096


def cache_key(layer: dict, settings: EsdSettings) -> str:
    """The layer's cache key: its weights hash, type and shape, and the settings."""
    fields = {
        "version": ESD_VERSION,
        "sha256": layer["sha256"],
        "type": layer["type"],
        "shape": list(layer["shape"]),
        **settings.as_dict(),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def layer_eigenvalues(weight: np.ndarray, layer_type: str, **options):
    """(slice labels, eigenvalues array of shape (num_matrices, M), (N, M)) of a layer's weight:
    :func:`begin_layer_eigenvalues` (its options) and the eigensolves at once."""
    return begin_layer_eigenvalues(weight, layer_type, **options)()


def begin_layer_eigenvalues(weight: np.ndarray, layer_type: str, *, conv2d: str, normalize: str,
                            conv2d_fft_size: int | None = None, shuffle_seed: int | None = None,
                            device: str | None = None, gram: str = "float32"):
    """The work of :func:`layer_eigenvalues` but the float64 eigensolves, which the returned
    function does (it returns (slice labels, eigenvalues array of shape (num_matrices, M), (N, M))):
    a job computes the Gram matrices of large layers with all its BLAS threads, then solves
    several at once (:func:`compute_model_esd`). Every other route (the shuffled spectra, ``fft``,
    a torch ``device``) does all its work here.

    With ``shuffle_seed`` each matrix's entries are shuffled first (for ``fft``, the kernel's:
    they are the operator's entries), so every matrix keeps its own values. ``pooled`` gives one
    row of the kh*kw slices' eigenvalues together, with one slice's (N, M). ``device``: the
    torch device of :func:`zooscope.spectra.spectrum.eigenvalues` (None: numpy; ``fft`` always numpy);
    ``gram``: the precision of the Gram matrix's products there (config ``esd.gram``; the shuffled
    spectra are float32 anyway, ``fft`` is an SVD per frequency).
    """
    if layer_type == "Conv2d" and conv2d == "fft":
        n = spectrum.conv2d_fft_size(np.shape(weight), conv2d_fft_size)
        kernel = weight if shuffle_seed is None else spectrum.shuffled(weight, shuffle_seed)
        values = spectrum.conv2d_fft_eigenvalues(kernel, n, normalize=normalize)
        result = [""], values[None, :], spectrum.conv2d_fft_shape(np.shape(weight), n)
        return lambda: result
    matrices = spectrum.layer_matrices(weight, layer_type, conv2d=conv2d)
    if shuffle_seed is None and device is None:
        solves = [spectrum.begin_eigenvalues(m.matrix, normalize=normalize, gram=gram) for m in matrices]
        solve = lambda: [solve_one() for solve_one in solves]  # noqa: E731
    elif shuffle_seed is None:
        rows = [spectrum.eigenvalues(m.matrix, normalize=normalize, device=device, gram=gram) for m in matrices]
        solve = lambda: rows  # noqa: E731
    else:  # the randomization check's spectra, in float32 (spectrum.shuffled_eigenvalues says why)
        rows = [spectrum.shuffled_eigenvalues(m.matrix, shuffle_seed, normalize=normalize, device=device)
                for m in matrices]
        solve = lambda: rows  # noqa: E731
    shape = spectrum.oriented_shape(matrices[0].matrix)
    labels = [m.label for m in matrices]
    pooled = layer_type == "Conv2d" and conv2d == "pooled"  # each slice shuffled on its own, as for slices

    def finish():
        rows = solve()
        if pooled:
            return [""], spectrum.pooled_eigenvalues(rows)[None, :], shape
        return labels, np.vstack(rows), shape

    return finish


def shuffle_seed(layer: dict) -> int:
    """The shuffle's seed, from the layer's weights hash: deterministic per layer and weights."""
    return int(layer["sha256"][:16], 16)


def _begin_entry(reader, layer: dict, key: str, out_dir: Path, settings: EsdSettings, *,
                 device: str | None):
    """The work of a layer's cache entry but its eigensolves (:func:`begin_layer_eigenvalues`);
    the returned function does them, writes the entry's arrays and returns its record. A layer
    that fails (bad weights) gets a failed record, never an exception; a MemoryError is raised."""
    record = {
        "name": layer["name"],
        "tensor": layer["tensor"],
        "type": layer["type"],
        "shape": list(layer["shape"]),
        "depth": layer["depth"],
        "key": key,
        "file": None,
        "rand_file": None,
        "slices": [],
        "N": None,
        "M": None,
        "status": "ok",
        "reason": "",
    }
    npy_path = out_dir / f"{layer['name']}.npy"
    rand_path = out_dir / f"{layer['name']}{RAND_SUFFIX}"

    def failed(error: Exception) -> dict:
        record.update(status="failed", reason=f"{type(error).__name__}: {error}")
        with contextlib.suppress(ValueError, IndexError):  # its shape is still known
            record["N"], record["M"] = spectrum.analysed_shape(
                layer["shape"], layer["type"], conv2d=settings.conv2d, fft_size=settings.conv2d_fft_size)
        npy_path.unlink(missing_ok=True)
        rand_path.unlink(missing_ok=True)
        return record

    try:
        weight = reader.get_tensor(layer["tensor"])
        matrices = settings.matrices()
        solve = begin_layer_eigenvalues(weight, layer["type"], **matrices, device=device)
        rand = (layer_eigenvalues(weight, layer["type"], **matrices, shuffle_seed=shuffle_seed(layer),
                                  device=device)[1]
                if settings.randomize else None)
    except MemoryError:  # not the layer's fault: the model fails (zooscope.failures), to be retried
        raise
    except Exception as error:  # a bad layer becomes a failed row, never a failed model
        return lambda error=error: failed(error)  # the name "error" ends with the except block

    def finish() -> dict:
        try:
            labels, values, (n, m) = solve()
        except MemoryError:
            raise
        except Exception as error:
            return failed(error)
        io.write_npy(npy_path, values)
        if rand is None:
            rand_path.unlink(missing_ok=True)
        else:
            io.write_npy(rand_path, rand)
        record.update(file=npy_path.name, rand_file=rand_path.name if settings.randomize else None,
                      slices=labels, N=int(n), M=int(m))
        return record

    return finish


def compute_model_esd(weights_path, layers_path, out_dir, settings: EsdSettings = EsdSettings(), *,
                      device: str = "cpu", shard: tuple[int, int] | None = None, threads: int = 1,
                      shared_cache: str | Path | None = None) -> dict:
    """Compute (or reuse) every layer's eigenvalues; return the index that the fit stage reads.

    ``settings`` (config ``esd:``) are the cache key with each layer's weights hash; with
    ``randomize`` the eigenvalues of each matrix with its entries shuffled are stored too. ``device``
    is config ``esd.device`` (auto, cpu, cuda; :func:`zooscope.spectra.spectrum.resolve_device`); it is not
    part of the cache key, since it changes the eigenvalues by rounding only. ``shard=(k, K)``
    computes only shard k of K (1-based) and returns that shard's index, for :func:`merge_shards`.
    ``threads``: the job's threads (its BLAS threads are already limited to them).
    ``shared_cache``: the folder of the zoo's shared store (zooscope.spectra.shared_cache; config
    ``esd.shared_cache``, None: off): an entry another model computed is taken from it instead of
    computed, and a computed one is put there. The index is the same either way.
    """
    torch_device = spectrum.resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layers_doc = io.read_json(layers_path)
    layers = layers_doc["layers"]
    if shard is not None:
        k, shards = shard
        if not 1 <= k <= shards:
            raise ValueError(f"shard {k} of {shards} does not exist: shards are numbered 1 to {shards}")
        layers = [layers[i] for i in resources.shard_layers([layer["shape"] for layer in layers], shards)[k - 1]]
    records: list[dict | None] = [None] * len(layers)
    todo = []  # (position, layer, key) of the entries to compute
    for position, layer in enumerate(layers):
        key = cache_key(layer, settings)
        entry_path = out_dir / f"{layer['name']}{ENTRY_SUFFIX}"
        cached = io.read_json(entry_path) if entry_path.is_file() else None
        if cached and cached.get("key") == key and all(
            cached[field] is None or (out_dir / cached[field]).is_file() for field in ("file", "rand_file")
        ):
            records[position] = cached
            log.info("[%d/%d] cached %s (%s)", position + 1, len(layers), layer["name"], layer["type"])
        else:
            todo.append((position, layer, key))
    reader = io.SafetensorsReader(weights_path)  # one tensor's pages at a time (its docstring)
    store = SharedStore(shared_cache) if shared_cache else None
    shared: list[str] = []

    def begin(item):
        """The layer's work but its eigensolves; the returned function finishes it."""
        position, layer, key = item
        record = _shared_entry(store, layer, key, out_dir, settings.randomize) if store else None
        if record is not None:
            shared.append(layer["name"])  # list.append is atomic under the GIL
            entry = lambda: record  # noqa: E731
        else:
            entry = _begin_entry(reader, layer, key, out_dir, settings, device=torch_device)

        def finish() -> None:
            done = entry()
            if store and record is None and done["status"] == "ok":
                store.put(key, {field: done[field] for field in SHARED_FIELDS}, out_dir / done["file"],
                          out_dir / done["rand_file"] if done["rand_file"] else None)
            io.write_json(out_dir / f"{layer['name']}{ENTRY_SUFFIX}", done)
            records[position] = done
            log.info("[%d/%d] %s %s (%s)%s", position + 1, len(layers), "shared" if record else "computed",
                     layer["name"], layer["type"], f": {done['reason']}" if done["status"] != "ok" else "")

        return finish

    # Small matrices a layer per thread, each with one BLAS thread: at their size threaded BLAS
    # gains little, a layer per thread nearly ``threads`` times. Large ones in batches of up to
    # ``threads`` layers (and resources.gram_batch_bytes of Gram matrices): their Gram matrices
    # one after another with all the job's BLAS threads, then their eigensolves at once, one BLAS
    # thread each (the two-stage eigensolver of spectrum.gram_eigenvalues gains little from a
    # second thread), the last batch's together with the small layers. Which layers run which way,
    # and on how many BLAS threads, depends on the layers' shapes and the job's threads only, so
    # the same model, settings and threads give the same bytes. (Another thread count can change
    # a large layer's last bits: OpenBLAS's threaded AVX2 products and both eigensolvers at some
    # sizes sum in another order; zooscope.spectra.blas.) (On a GPU every layer goes in turn.)
    sizes = [resources.layer_matrices(layer["shape"]) for _, layer, _ in todo]
    in_pool = [torch_device is None and m < PARALLEL_LAYERS_BELOW for _, _, m in sizes]
    small = [item for item, pooled in zip(todo, in_pool) if pooled]
    large = [item for item, pooled in zip(todo, in_pool) if not pooled]
    batches = resources.gram_batches([count * m * m * 8 for (count, _, m), pooled in zip(sizes, in_pool)
                                      if not pooled], max(1, threads),
                                     resources.gram_batch_bytes([layer["shape"] for layer in layers]))
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    if settings.randomize and torch_device is None and todo:
        # The shuffled spectra's float32 eigensolver is scipy's, whose BLAS is a library of its own: a
        # thread limit binds only the libraries loaded when it is set, so load it before the limits.
        import scipy.linalg  # noqa: F401
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for number, batch in enumerate(batches or [[]], 1):
            with threadpool_limits(limits=max(1, threads)):
                work = [begin(large[i]) for i in batch]
            # a batch of fewer eigensolves than threads, with nothing beside it, shares the threads
            # out (the small layers always have one: eigvalsh's bytes depend on its threads)
            each = max(1, threads // max(1, len(work)))
            if number == max(1, len(batches)) and small:  # the small layers fill the last batch's threads
                work += [lambda item=item: begin(item)() for item in small]
                each = 1
            with threadpool_limits(limits=each):
                list(pool.map(lambda task: task(), work))  # list(): raises a worker's exception here
    reused = len(layers) - len(todo)
    if shard is None:  # a shard sees only its own layers; the merge removes stale entries
        _remove_stale_entries(out_dir, {layer["name"] for layer in layers})
    log.info("%s%s: %d layers on %s, %d reused from the cache, %d from the shared store, %d computed",
             layers_doc.get("model", ""), f" shard {shard[0]} of {shard[1]}" if shard else "", len(records),
             torch_device or "cpu (numpy)", reused, len(shared), len(todo) - len(shared))
    index = {"model": layers_doc.get("model"), "settings": settings.as_dict(), "layers": records}
    return index if shard is None else {**index, "shard": list(shard)}


def _shared_entry(store: SharedStore, layer: dict, key: str, out_dir: Path, randomize: bool) -> dict | None:
    """The record of a layer whose entry the shared store has (its arrays placed in ``out_dir``)."""
    npy_path, rand_path = out_dir / f"{layer['name']}.npy", out_dir / f"{layer['name']}{RAND_SUFFIX}"
    fields = store.get(key, npy_path, rand_path if randomize else None)
    if fields is None:
        return None
    if not randomize:
        rand_path.unlink(missing_ok=True)
    return {"name": layer["name"], "tensor": layer["tensor"], "type": layer["type"], "shape": list(layer["shape"]),
            "depth": layer["depth"], "key": key, "file": npy_path.name,
            "rand_file": rand_path.name if randomize else None, "status": "ok", "reason": "", **fields}


def merge_shards(shard_indexes: list[dict], layers_path, out_dir) -> dict:
    """The model's index from the indexes of its K shards: what one unsharded job returns.

    Checks that the shards are 1..K of the same K with the same settings and together hold every
    layer of ``layers_path`` exactly once; removes entries of layers the model no longer has.
    """
    layers_doc = io.read_json(layers_path)
    names = [layer["name"] for layer in layers_doc["layers"]]
    shards = sorted(tuple(index["shard"]) for index in shard_indexes)
    total = len(shard_indexes)
    if shards != [(k, total) for k in range(1, total + 1)]:
        raise ValueError(f"the shards of model {layers_doc.get('model')!r} are {shards}, not 1..{total} of {total}; "
                         "delete its results/esd folder and run again")
    settings = {json.dumps(index["settings"], sort_keys=True) for index in shard_indexes}
    if len(settings) != 1:
        raise ValueError(f"the shards of model {layers_doc.get('model')!r} were computed with different settings "
                         f"({sorted(settings)}); rerun them with --forcerun esd_shard")
    records = {}
    for index in shard_indexes:
        for record in index["layers"]:
            if record["name"] in records:
                raise ValueError(f"layer {record['name']!r} is in two shards of model {layers_doc.get('model')!r}")
            records[record["name"]] = record
    missing = [name for name in names if name not in records]
    extra = sorted(set(records) - set(names))
    if missing or extra:
        raise ValueError(f"the shards of model {layers_doc.get('model')!r} do not match its layers.json "
                         f"(missing: {missing or 'none'}; unknown: {extra or 'none'}); rerun them with "
                         "--forcerun esd_shard")
    _remove_stale_entries(Path(out_dir), set(names))
    return {"model": layers_doc.get("model"), "settings": shard_indexes[0]["settings"],
            "layers": [records[name] for name in names]}


def _remove_stale_entries(out_dir: Path, names: set[str]) -> None:
    for path in out_dir.iterdir():
        for suffix in (RAND_SUFFIX, ENTRY_SUFFIX, ".npy"):  # the longest suffix first
            if path.name.endswith(suffix):
                if path.name[: -len(suffix)] not in names:
                    path.unlink()
                break


def load_layer_eigenvalues(esd_dir, record: dict, *, randomized: bool = False) -> np.ndarray:
    """The (num_matrices, M) eigenvalue array of one index record (``randomized``: of its shuffled
    matrices, which exist when the record's ``rand_file`` is set)."""
    return np.load(Path(esd_dir) / record["rand_file" if randomized else "file"], allow_pickle=False)
