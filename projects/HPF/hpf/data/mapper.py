"""A DatasetMapper whose failures name the image that caused them."""
from detectron2.data import DatasetMapper as _D2DatasetMapper

__all__ = ["DatasetMapper"]


class DatasetMapper(_D2DatasetMapper):
    """
    detectron2's ``DatasetMapper``; a missing, truncated or corrupt image file (PIL's errors
    do not always say which file) is re-raised as ``OSError`` naming ``file_name``.
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError, ValueError) as e:
            file_name = dataset_dict.get("file_name", "<no file_name>")
            if file_name in str(e):
                raise
            raise OSError(f"Cannot load image '{file_name}': {type(e).__name__}: {e}") from e
