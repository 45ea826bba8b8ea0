"""cffi (API mode) build of native/bitmap.c as ``nodeagent._bitmap``.

Used by setup.py through ``cffi_modules``; paths are relative to the repository root,
which is where setuptools runs.  Rebuild with ``pip install -e .`` (not ``ffibuilder.compile()``
in place: its differently named .so would shadow the one setuptools builds).
"""

from cffi import FFI

# Mirrors native/bitmap.h (cffi's parser cannot read the preprocessor parts).
CDEF = """
#define BM_MAX_SIZE ...
#define BM_FORMAT_VERSION ...
#define BM_HEADER_SIZE ...
enum {
    BM_OK, BM_ERANGE, BM_EINVAL, BM_ENOMEM, BM_EFULL, BM_EBUSY, BM_ENOENT,
    BM_EFORMAT, BM_EVERSION, BM_ESIZE, ...
};
typedef struct bm bm_t;
int bm_create(uint32_t size, bm_t **out);
void bm_destroy(bm_t *bm);
uint32_t bm_size(const bm_t *bm);
int32_t bm_alloc_lowest(bm_t *bm);
int32_t bm_alloc_many(bm_t *bm, uint32_t n, uint32_t *out);
int bm_alloc(bm_t *bm, uint32_t slot);
int bm_release(bm_t *bm, uint32_t slot);
int bm_test(const bm_t *bm, uint32_t slot);
int bm_is_reserved(const bm_t *bm, uint32_t slot);
uint32_t bm_count_allocated(const bm_t *bm);
uint32_t bm_count_reserved(const bm_t *bm);
uint32_t bm_count_free(const bm_t *bm);
int32_t bm_reserve_range(bm_t *bm, uint32_t lo, uint32_t hi);
int32_t bm_next_allocated(const bm_t *bm, uint32_t from);
int64_t bm_serialize(const bm_t *bm, uint8_t *buf, size_t cap);
int bm_deserialize(const uint8_t *buf, size_t len, uint32_t expected_size, bm_t **out);
const char *bm_strerror(int err);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "nodeagent._bitmap",
    '#include "bitmap.h"',
    sources=["native/bitmap.c"],
    include_dirs=["native"],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra"],
)
