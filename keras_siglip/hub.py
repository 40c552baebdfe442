"""Published checkpoints by name: fetched from their sources, converted once, cached.

    SigLIPBackbone.from_preset("siglip2_so400m_patch14_384")

A card (`keras-siglip presets`) lists its sources in order of preference: the
Hugging Face repo, the keras-hub Kaggle handle, the big_vision file. The first
that answers is downloaded through its own client (`huggingface_hub`,
`kagglehub`, or a resumable HTTP download for big_vision's public bucket), so
their settings work as usual: `HF_TOKEN`, `HF_ENDPOINT` mirrors, `HF_HUB_CACHE`,
`HF_HUB_OFFLINE=1`, `KAGGLE_USERNAME` / `KAGGLE_KEY`. The download is converted
once into `$KERAS_SIGLIP_CACHE/presets/NAME` (atomically, with the weight
files' checksums); later calls load that folder without touching the network.
A cached preset whose weights no longer match their checksums is reported and
rebuilt from the sources.

`KERAS_SIGLIP_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) forbids every download;
`KERAS_SIGLIP_GCS_ENDPOINT` replaces `https://storage.googleapis.com` for
big_vision files (a mirror).
"""

import os
import sys
import urllib.error
import urllib.request


# What a converter reads from a Hugging Face repo (the rest, e.g. PyTorch pickles
# or ONNX copies, is never downloaded).
HF_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "spiece.model",
            "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
            "preprocessor_config.json"]
GCS_ENDPOINT = "https://storage.googleapis.com"
_CHUNK = 1 << 20


class PresetUnavailable(OSError):
    """No source of a published card could be fetched (offline, unreachable,
    not found); the message lists each source tried and why it failed."""


class GatedCheckpoint(PresetUnavailable):
    """The checkpoint's repository is gated: its licence must be accepted and
    a token given before it downloads."""


def published_card(name):
    """The card of a published checkpoint with weights to fetch (SigLIP, SigLIP 2,
    NaFlex, PaliGemma 1 / 2), or None."""
    if not isinstance(name, str):
        return None
    from keras_siglip.presets import PUBLISHED_PRESETS, pali_gemma_presets

    return PUBLISHED_PRESETS.get(name) or pali_gemma_presets().get(name)


def cache_dir():
    """Where converted sources are kept (`$KERAS_SIGLIP_CACHE`, else ~/.cache/keras_siglip)."""
    default = os.path.join(os.path.expanduser("~"), ".cache", "keras_siglip")
    return os.environ.get("KERAS_SIGLIP_CACHE", default)


def cached_preset(name):
    """Where the converted preset of card `name` is kept."""
    return os.path.join(cache_dir(), "presets", name)


def is_cached(name):
    return os.path.isfile(os.path.join(cached_preset(name), "config.json"))


def offline():
    return any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on")
               for flag in ("KERAS_SIGLIP_OFFLINE", "HF_HUB_OFFLINE"))


def fetch_preset(name, allow_nan=False, progress=True):
    """The local preset folder of published card `name`: the cached conversion
    when it is whole, else downloaded from the first source that answers and
    converted (once). Raises `PresetUnavailable` (`GatedCheckpoint`) naming
    every source tried, `CheckpointMismatch` when a source holds another
    architecture than the card's."""
    from keras_siglip.convert import convert
    from keras_siglip.convert.common import CorruptCheckpoint
    from keras_siglip.utils.checksums import verify_checksums

    card = published_card(name)
    if card is None:
        raise ValueError(f"{name!r} is not a published checkpoint card (see `keras-siglip presets`).")
    target = cached_preset(name)
    if is_cached(name):
        try:
            verify_checksums(target)
            return target
        except (CorruptCheckpoint, FileNotFoundError) as error:
            print(f"keras-siglip: the cached preset of {name} is damaged: {error} Rebuilding it from its sources.",
                  file=sys.stderr)
    local, source = download(name, card)
    _check_card(name, card, local, source)
    if progress:
        print(f"Converting {source} -> {target}", file=sys.stderr)
    config = name if source.startswith("gs://") and name in _siglip_cards() else None
    convert(local, target, config=config, progress=progress, overwrite=True, allow_nan=allow_nan)
    return target


def download(name, card):
    """`(local path, source)` from the first of the card's sources that answers."""
    failures, gated = [], None
    for kind, reference in card["sources"].items():
        fetch = _FETCHERS.get(kind)
        if fetch is None or not _fetchable(kind, reference):
            continue
        try:
            return fetch(reference), reference
        except GatedCheckpoint as error:
            gated = gated or error
            failures.append(f"{kind} {reference} (gated)")
        except PresetUnavailable as error:
            failures.append(f"{kind} {reference} ({error})")
    if gated is not None:
        raise GatedCheckpoint(f"{gated} Tried: {'; '.join(failures)}.")
    tried = f"tried {'; '.join(failures)}" if failures else (
        f"its card names no source that can be downloaded ({card['sources']})")
    raise PresetUnavailable(
        f"Could not fetch the weights of {name!r}: {tried}. With a local copy of the checkpoint, "
        "convert it (`keras-siglip convert SRC DST`) and load the folder DST.")


def _fetchable(kind, reference):
    if kind == "big_vision":
        return reference.startswith(("gs://", "https://", "http://"))
    return kind in ("huggingface", "kaggle")


def _siglip_cards():
    from keras_siglip.presets import PUBLISHED_PRESETS

    return PUBLISHED_PRESETS


# -- sources ---------------------------------------------------------------------


def fetch_huggingface(repo_id):
    """Download the converter's files of `repo_id` into the Hugging Face cache
    (resumed where an earlier download stopped); the snapshot folder."""
    import huggingface_hub
    from huggingface_hub import errors

    # Read now, not when huggingface_hub was imported: a notebook may set them later.
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        return huggingface_hub.snapshot_download(
            repo_id, allow_patterns=HF_FILES, endpoint=endpoint, cache_dir=os.environ.get("HF_HUB_CACHE"),
            local_files_only=offline())
    except errors.GatedRepoError:
        raise GatedCheckpoint(
            f"The Hugging Face repo {repo_id} is gated: accept its licence at {endpoint}/{repo_id} while "
            "logged in, then give your token in HF_TOKEN (or run `hf auth login`).") from None
    except errors.RepositoryNotFoundError:
        raise PresetUnavailable(f"no repo {repo_id} at {endpoint} (or it is private: set HF_TOKEN)") from None
    except errors.LocalEntryNotFoundError:  # before EntryNotFoundError, its base
        reason = "offline (HF_HUB_OFFLINE=1)" if offline() else f"{endpoint} unreachable"
        raise PresetUnavailable(f"{reason}, and not in the Hugging Face cache") from None
    except (errors.RevisionNotFoundError, errors.EntryNotFoundError) as error:
        raise PresetUnavailable(f"not found at {endpoint}: {_first_line(error)}") from None
    except (errors.HfHubHTTPError, OSError) as error:
        raise PresetUnavailable(_first_line(error)) from None


def fetch_kaggle(handle):
    """Download a keras-hub preset from Kaggle with `kagglehub`; its folder."""
    if offline():
        raise PresetUnavailable("offline")
    import kagglehub

    try:
        return kagglehub.model_download(handle.removeprefix("kaggle://"))
    except Exception as error:  # kagglehub raises requests', its own and kagglesdk's errors
        if "403" in str(error) or "consent" in str(error).lower():
            raise GatedCheckpoint(
                f"The Kaggle model {handle} is gated: accept its licence on kaggle.com, then set "
                "KAGGLE_USERNAME and KAGGLE_KEY.") from None
        raise PresetUnavailable(_first_line(error)) from None


def fetch_big_vision(uri):
    """Download a big_vision `.npz` (a `gs://` file of the public bucket, read
    over HTTPS) into `$KERAS_SIGLIP_CACHE/downloads`, resuming a partial file."""
    if offline():
        raise PresetUnavailable("offline")
    url = uri
    if uri.startswith("gs://"):
        endpoint = os.environ.get("KERAS_SIGLIP_GCS_ENDPOINT", GCS_ENDPOINT).rstrip("/")
        url = f"{endpoint}/{uri[len('gs://'):]}"
    destination = os.path.join(cache_dir(), "downloads", os.path.basename(uri))
    if not os.path.isfile(destination):
        download_file(url, destination)
    return destination


_FETCHERS = {"huggingface": fetch_huggingface, "kaggle": fetch_kaggle, "big_vision": fetch_big_vision}


def download_file(url, destination, timeout=30):
    """HTTP(S) download to `destination`, through `destination + ".part"`: an
    interrupted download resumes from the bytes it has (an HTTP Range
    request); the file appears only when complete."""
    from tqdm.auto import tqdm

    os.makedirs(os.path.dirname(destination), exist_ok=True)
    partial = destination + ".part"
    have = os.path.getsize(partial) if os.path.exists(partial) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the partial file is already whole
            os.replace(partial, destination)
            return destination
        raise PresetUnavailable(f"HTTP {error.code} {error.reason} for {url}") from None
    except (urllib.error.URLError, OSError) as error:
        raise PresetUnavailable(f"{url} unreachable ({getattr(error, 'reason', error)})") from None
    with response:
        if have and response.status != 206:  # the server ignored the range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(partial, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=os.path.basename(destination),
            disable=None,
        ) as bar:
            try:
                for block in iter(lambda: response.read(_CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
            except OSError as error:
                raise PresetUnavailable(
                    f"the download of {url} was cut at {f.tell():,} bytes ({error}); "
                    "the next call resumes it") from None
        if total is not None and os.path.getsize(partial) != total:
            raise PresetUnavailable(
                f"the download of {url} stopped at {os.path.getsize(partial):,} of {total:,} bytes; "
                "the next call resumes it")
    os.replace(partial, destination)
    return destination


# -- checks ----------------------------------------------------------------------


def _check_card(name, card, local, source):
    """Refuse a source whose model is not the card's architecture (a repo
    renamed, replaced or mirrored wrongly), before anything is converted."""
    from keras_siglip.convert import read_checkpoint
    from keras_siglip.convert.common import CheckpointMismatch

    if source.startswith("gs://"):
        return  # read with config=name: big_vision's reader checks the shapes against the card
    found = read_checkpoint(local, progress=False).config
    differences = _differences(card["config"], found)
    if differences:
        shown = ", ".join(f"{key}: card {want!r}, {source} {got!r}" for key, want, got in differences[:6])
        raise CheckpointMismatch(f"{source} does not hold the architecture of the card {name!r}: {shown}.")


# The config entries that fix the weights' shapes (other entries, such as
# PaliGemma's sliding window, may differ between a card and a source's config).
SHAPE_KEYS = {
    "patch_size", "width", "depth", "num_heads", "mlp_dim", "image_size", "input_format", "pooling",
    "vocabulary_size", "sequence_length", "num_classes", "num_layers", "num_query_heads",
    "num_key_value_heads", "hidden_dim", "intermediate_dim", "head_dim", "vit_patch_size",
    "vit_hidden_dim", "vit_num_layers", "vit_num_heads", "vit_intermediate_dim",
}


def _differences(expected, found, prefix=""):
    """`[(key, expected, found)]` for the shape-fixing keys whose values differ."""
    out = []
    for key, want in expected.items():
        if key not in found:
            continue
        got = found[key]
        if isinstance(want, dict) and isinstance(got, dict):
            out += _differences(want, got, f"{prefix}{key}.")
        elif key in SHAPE_KEYS and _normal(want) != _normal(got):
            out.append((prefix + key, want, got))
    return out


def _normal(value):
    return list(value) if isinstance(value, tuple) else value


def _first_line(error):
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
