"""SAE names that point into the Hugging Face cache: `org/repo/sae_id`, resolved offline.

SAELens' `SAE.from_pretrained(release, sae_id)`, `huggingface-cli download`
and sparsify's `Sae.load_from_hub` all leave an SAE's files in the local
Hugging Face cache (`$HF_HUB_CACHE`, by default ~/.cache/huggingface/hub)
under the repository they came from. `--sae org/repo/path/in/repo` (or
`hf://org/repo/path/in/repo`) names such a folder: the repository's cached
snapshot of `main` (or `@revision` after the repo name) joined with the
path. Nothing is downloaded: a repository missing from the cache is an
error that says how to fetch it on a machine that can.

Examples of the path part: a SAELens repository's hook folder
(`jbloom/GPT2-Small-SAEs-Reformatted/blocks.8.hook_resid_pre`), Gemma
Scope's `google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`,
sparsify's `EleutherAI/sae-llama-3-8b-32x/layers.24` (or the repository
alone with `hook_layer`).
"""

from __future__ import annotations

from pathlib import Path

from steering.sae.autoencoder import SAEConfigError

HF_PREFIX = "hf://"


class SAENotCachedError(SAEConfigError):
    """An `org/repo/...` SAE name whose repository is not in the local Hugging Face cache."""


def resolve_sae_path(name: str | Path) -> Path:
    """A local path as is; `[hf://]org/repo[@revision][/path]` as that folder of the cached snapshot."""
    text = str(name)
    if not text.startswith(HF_PREFIX) and (Path(text).exists() or text.count("/") < 1 or text.startswith((".", "/", "~"))):
        return Path(text).expanduser()
    parts = text.removeprefix(HF_PREFIX).strip("/").split("/")
    if len(parts) < 2:
        raise SAEConfigError(f"{text!r} is not an SAE folder, and not a Hugging Face name (org/repo/path)", "sae")
    repo, _, revision = f"{parts[0]}/{parts[1]}".partition("@")
    inside = "/".join(parts[2:])
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        snapshot = Path(snapshot_download(repo, revision=revision or None, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, or a revision the cache lacks
        include = f" --include '{inside}/*'" if inside else ""
        raise SAENotCachedError(
            f"{text!r} is not a local folder, and the repository {repo} is not in the Hugging Face cache "
            f"({HF_HUB_CACHE}); on a machine with internet run `huggingface-cli download {repo}{include}` "
            f"and copy its cache here ({type(e).__name__})", "sae") from e
    path = snapshot / inside
    if not path.exists():
        raise SAENotCachedError(f"the cached snapshot of {repo} ({snapshot}) has no {inside!r}", "sae")
    return path
