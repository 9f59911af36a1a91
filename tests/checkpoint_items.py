"""Reading one item of a checkpoint step as it is on disk, whatever mesh and processes wrote it."""
import pathlib

import jax
import orbax.checkpoint as ocp


def read_item(path: pathlib.Path):
    """The arrays of a checkpoint item directory (e.g. `checkpoints/6/model`), restored onto this
    process's first device from the item's own metadata (no model or target structure needed)."""
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as reader:
        meta = reader.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        return reader.restore(path, jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                                                 meta))
