"""Where a run came from: code digest, git commit, image, package lock, determinism settings, devices.

`python -m mnist_trainer.lineage code-digest` prints the digest of this package's source; the image build runs
it and keeps the result in /opt/trainer/code-digest (Settings.code_digest_file). Outside Docker the same digest is computed at run time from the
same files, so a checkout and an image built from it record the same value.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mnist_trainer.config import Settings

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_LOCK_ARTIFACT = "lineage/packages.lock.txt"
# Tags every run carries (and its registered version copies), in the order `trainer lineage` prints them.
CODE_DIGEST_TAG = "code_digest"
LINEAGE_TAGS = (
    "data_source",
    "data_digest",
    CODE_DIGEST_TAG,
    "code_digest_source",
    "git_sha",
    "image",
    "package_lock_digest",
    "tf_op_determinism",
    "devices",
)


def code_digest_of(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 over the package's Python files (relative path and bytes, in path order): the trainer's code."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()


def code_digest(recorded_in: Path) -> tuple[str, str]:
    """(digest, where it came from): the image build's record when there is one, else computed now."""
    if recorded_in.is_file():
        recorded = recorded_in.read_text().strip()
        if recorded:
            return recorded, "image build"
    return code_digest_of(), "computed at run time"


def git_sha(built_from: str | None) -> str | None:
    """The commit the image was built from (build arg GIT_SHA), or of the checkout the package runs from.

    A checkout with uncommitted changes to the trainer gets '-dirty': the commit alone would not name its code.
    """
    if built_from:
        return built_from
    try:
        sha = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if changes else sha or None


def package_lock() -> str:
    """Every installed distribution as `name==version`, sorted: what `pip freeze` would print."""
    found = {
        f"{dist.metadata['Name'].lower().replace('_', '-')}=={dist.version}"
        for dist in metadata.distributions()
        if dist.metadata["Name"]
    }
    return "\n".join(sorted(found)) + "\n"


def digest_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def enable_determinism(seed: int) -> None:
    """Seed Python, NumPy and TF, and make TF pick deterministic kernels (and a deterministic tf.data order).

    Process-wide and irreversible in TensorFlow, hence called once per training process.
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def determinism_enabled() -> bool:
    # TF exports enable_op_determinism but not its query; the query lives next to it in the same module.
    from tensorflow.python.framework import config as tf_config

    return bool(tf_config.is_op_determinism_enabled())


@dataclass(frozen=True)
class Environment:
    """What ran the training, as run tags."""

    code_digest: str
    code_digest_source: str
    git_sha: str | None
    image: str | None
    lock: str

    @property
    def lock_digest(self) -> str:
        return digest_text(self.lock)

    def tags(self) -> dict[str, str]:
        tags = {
            CODE_DIGEST_TAG: self.code_digest,
            "code_digest_source": self.code_digest_source,
            "package_lock_digest": self.lock_digest,
        }
        if self.git_sha:
            tags["git_sha"] = self.git_sha
        if self.image:
            tags["image"] = self.image
        return tags


def current_environment(settings: Settings) -> Environment:
    digest, source = code_digest(settings.code_digest_file)
    return Environment(digest, source, git_sha(settings.git_sha), settings.image, package_lock())


def tensorflow_tags() -> dict[str, str]:
    """Determinism settings and threading: what decides whether the same inputs give the same weights."""
    import tensorflow as tf

    return {
        "tf_op_determinism": "on" if determinism_enabled() else "off",
        "tf_intra_op_threads": str(tf.config.threading.get_intra_op_parallelism_threads()),
        "tf_inter_op_threads": str(tf.config.threading.get_inter_op_parallelism_threads()),
        "python_version": sys.version.split()[0],
    }


def main(argv: list[str]) -> None:
    if argv != ["code-digest"]:
        raise SystemExit("usage: python -m mnist_trainer.lineage code-digest")
    print(code_digest_of())


if __name__ == "__main__":
    main(sys.argv[1:])
