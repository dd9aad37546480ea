"""npool._cuda packs each kernel's argument struct as a numpy structured scalar: its mirror must
have the C struct's size and every field at the C struct's offset, in declaration order (a field
added on one side only, or moved, shows here rather than as a kernel reading garbage). The
layouts come from the host-compiled kernels (NPOOL_EXPORT_LAYOUT in src/cuda/)."""
import ctypes
import re

import pytest

from npool._cuda import global_pools, set_pools, windowed_softmax

MIRRORS = {
    "npool_windowed_softmax_args_layout": windowed_softmax.ARGS,
    "npool_global_pools_args_layout": global_pools.ARGS,
    "npool_set_pools_matmul_args_layout": set_pools.MATMUL_ARGS,
    "npool_set_pools_vlad_args_layout": set_pools.VLAD_ARGS,
    "npool_set_pools_l2n_args_layout": set_pools.L2N_ARGS,
    "npool_set_pools_fv_args_layout": set_pools.FV_ARGS,
    "npool_set_pools_gating_args_layout": set_pools.GATING_ARGS,
    "npool_set_pools_rows_args_layout": set_pools.ROWS_ARGS,
}


@pytest.mark.parametrize("export", list(MIRRORS))
def test_the_numpy_mirror_matches_the_c_struct_field_by_field(emulation_library, export):
    mirror = MIRRORS[export]
    layout = (ctypes.c_int64 * 64)()
    function = getattr(emulation_library, export)
    function.restype = ctypes.c_int64
    count = function(layout)
    size, *offsets = list(layout)[:count]
    names = getattr(emulation_library, f"{export}_fields")
    names.restype = ctypes.c_char_p
    names = re.findall(r"NPOOL_OFFSET\(A, (\w+)\)", names().decode())
    assert len(names) == len(offsets)
    assert size == mirror.itemsize
    assert dict(zip(names, offsets)) == {name: mirror.fields[name][1] for name in mirror.names}
    assert names == list(mirror.names)
