"""cffi (API mode) build of native/vfset.c as ``nodeagent._vfset`` (used by setup.py through
``cffi_modules``, like build_bitmap.py; rebuild with ``pip install -e .``)."""

from cffi import FFI

# Mirrors native/vfset.h (cffi's parser cannot read the preprocessor parts).
CDEF = """
enum {
    VFSET_S_MAC, VFSET_S_VLAN, VFSET_S_SPOOFCHK, VFSET_S_TRUST, VFSET_S_RATE,
    VFSET_S_LINK_STATE, VFSET_NSETTINGS
};
#define VFSET_MAC ...
#define VFSET_VLAN ...
#define VFSET_SPOOFCHK ...
#define VFSET_TRUST ...
#define VFSET_RATE ...
#define VFSET_LINK_STATE ...
#define VFSET_ALL ...
#define VFSET_BAD_VF ...
#define VFSET_BAD_MASK ...
#define VFSET_NOT_SENT ...
#define VFSET_MAX_VFS ...
typedef struct {
    uint32_t vf;
    uint32_t mask;
    uint8_t mac[6];
    uint16_t vlan;
    uint8_t qos;
    uint8_t spoofchk;
    uint8_t trust;
    uint16_t vlan_proto;
    uint32_t min_tx_rate;
    uint32_t max_tx_rate;
    uint32_t link_state;
    int32_t err[6];
    uint32_t bad;
} vfset_vf_t;
int vfset_open(void);
int vfset_apply(int fd, uint32_t ifindex, vfset_vf_t *vfs, size_t n);
int vfset_num_vfs(int fd, uint32_t ifindex);
int vfset_encode(uint32_t ifindex, const vfset_vf_t *vf, uint32_t mask, uint32_t seq,
                 uint8_t *buf, size_t cap);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "nodeagent._vfset",
    '#include "vfset.h"\n'
    "_Static_assert(VFSET_NSETTINGS == 6, \"err[] in build_vfset.py's CDEF\");",
    sources=["native/vfset.c"],
    include_dirs=["native"],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra"],
)
