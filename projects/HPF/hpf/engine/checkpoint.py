"""A checkpointer whose files are complete or absent, never half-written."""
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "resume_or_load"]


def _atomic_write(path, write):
    """
    Calls ``write(f)`` on a temporary file next to ``path``, then renames it to ``path``.

    Args:
        path (str): the final local file.
        write (callable): writes the content to the open binary file it is given.
    """
    # A fixed temporary name: a file left by a killed process is overwritten by the next try.
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:  # also SystemExit / KeyboardInterrupt from a signal handler
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    # Make the rename itself durable before anything points at the new file.
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AtomicCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` whose ``save`` writes each checkpoint, and the
    ``last_checkpoint`` file naming it, to a temporary file renamed into place once complete.

    fvcore writes both in place: a job killed during a save (preemption, a requeue, a node
    failure, ``scancel``) can leave a truncated ``model_final.pth`` that ``last_checkpoint``
    already names, or an empty ``last_checkpoint``, and ``--resume`` then fails. Here
    ``last_checkpoint`` only ever names a complete file. Directories that are not local
    (e.g. a remote ``PathManager`` URL) are written as fvcore does.
    """

    def _is_local(self):
        return bool(self.save_dir) and os.path.isdir(self.save_dir)

    def save(self, name, **kwargs):
        """
        Same as ``fvcore.common.checkpoint.Checkpointer.save``.

        Args:
            name (str): file name without ``.pth``.
            kwargs: extra data stored in the checkpoint (e.g. ``iteration``).
        """
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._is_local():
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        """
        Points ``last_checkpoint`` at ``last_filename_basename``, atomically.

        Args:
            last_filename_basename (str): the checkpoint's file name in ``save_dir``.
        """
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        _atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                      lambda f: f.write(last_filename_basename.encode()))


def resume_or_load(checkpointer, path, resume):
    """
    ``checkpointer.resume_or_load(path, resume=resume)``, with a download failure of a URL
    ``path`` reported as what to do rather than a bare ``URLError``.

    Args:
        checkpointer: a detectron2 checkpointer.
        path (str): ``train.init_checkpoint``: a local file or a URL.
        resume (bool): continue from ``last_checkpoint`` when the output directory has one.
    """
    if path and "://" not in path and not (resume and checkpointer.has_checkpoint()):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"train.init_checkpoint={path}: no such file. Pass an existing checkpoint "
                "(.pth, or detectron2's .pkl), a URL, or train.init_checkpoint='' to start "
                "from random weights."
            )
    try:
        return checkpointer.resume_or_load(path, resume=resume)
    except OSError as e:  # URLError and HTTPError are OSErrors
        if "://" not in path or path.startswith("file://"):
            raise
        name = path.rstrip("/").rsplit("/", 1)[-1]
        raise RuntimeError(
            f"train.init_checkpoint: {name} could not be downloaded from {path} ({e}). "
            f"Download it where the network allows and pass the local file instead: "
            f"train.init_checkpoint=/path/to/{name}"
        ) from e
