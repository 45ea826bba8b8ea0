/* Hierarchical slot bitmap; see bitmap.h for the model and the wire format. */
#include "bitmap.h"

#include <stdlib.h>
#include <string.h>

#define BM_MAX_LEVELS 4 /* 64^4 == BM_MAX_SIZE */
#define ONES UINT64_MAX

struct bm {
    uint32_t size;
    uint32_t n_alloc;
    uint32_t n_resv;
    int nlevels;
    /* lv[0]: used bits (allocated | reserved); lv[k]: bit j set iff word j
     * of lv[k-1] is full.  Bits past the end of every level are set, so the
     * descent in bm_alloc_lowest never leaves the valid range. */
    uint64_t *lv[BM_MAX_LEVELS];
    uint32_t nwords[BM_MAX_LEVELS];
    /* Reserved bits, shaped like lv[0], padding bits set: an allocated slot
     * is one with lv[0] set and resv clear. */
    uint64_t *resv;
};

#if defined(__GNUC__) || defined(__clang__)
static inline int ctz64(uint64_t x) { return __builtin_ctzll(x); }
static inline int popcount64(uint64_t x) { return __builtin_popcountll(x); }
#else
static inline int ctz64(uint64_t x)
{
    int n = 0;
    while (!(x & 1)) {
        x >>= 1;
        n++;
    }
    return n;
}
static inline int popcount64(uint64_t x)
{
    int n = 0;
    for (; x; x &= x - 1)
        n++;
    return n;
}
#endif

static inline uint32_t words_for(uint32_t bits) { return (bits + 63) / 64; }

/* Mask of bits at or above `bits` in the last word of a level of that many bits. */
static inline uint64_t tail_padding(uint32_t bits)
{
    return bits % 64 ? ONES << (bits % 64) : 0;
}

/* Set bit i of level k and propagate "became full" upwards. */
static void mark_used(bm_t *bm, int k, uint32_t i)
{
    for (; k < bm->nlevels; k++, i >>= 6) {
        uint64_t *w = &bm->lv[k][i >> 6];
        *w |= UINT64_C(1) << (i & 63);
        if (*w != ONES)
            return;
    }
}

/* Clear bit i of level 0 and propagate "no longer full" upwards. */
static void mark_free(bm_t *bm, uint32_t i)
{
    for (int k = 0; k < bm->nlevels; k++, i >>= 6) {
        uint64_t *w = &bm->lv[k][i >> 6];
        int was_full = *w == ONES;
        *w &= ~(UINT64_C(1) << (i & 63));
        if (!was_full)
            return;
    }
}

/* Recompute padding and all summary levels from lv[0] and resv. */
static void rebuild(bm_t *bm)
{
    uint64_t pad = tail_padding(bm->size);
    bm->lv[0][bm->nwords[0] - 1] |= pad;
    bm->resv[bm->nwords[0] - 1] |= pad;
    for (int k = 1; k < bm->nlevels; k++) {
        uint32_t below = bm->nwords[k - 1];
        memset(bm->lv[k], 0, (size_t)bm->nwords[k] * sizeof(uint64_t));
        bm->lv[k][bm->nwords[k] - 1] = tail_padding(below);
        for (uint32_t j = 0; j < below; j++)
            if (bm->lv[k - 1][j] == ONES)
                bm->lv[k][j >> 6] |= UINT64_C(1) << (j & 63);
    }
}

int bm_create(uint32_t size, bm_t **out)
{
    if (!out || size == 0 || size > BM_MAX_SIZE)
        return BM_EINVAL;
    bm_t *bm = calloc(1, sizeof(*bm));
    if (!bm)
        return BM_ENOMEM;
    bm->size = size;
    size_t total = 0;
    uint32_t bits = size;
    do {
        bm->nwords[bm->nlevels] = words_for(bits);
        total += bm->nwords[bm->nlevels];
        bits = bm->nwords[bm->nlevels++];
    } while (bits > 1);
    total += bm->nwords[0]; /* resv */
    uint64_t *mem = calloc(total, sizeof(uint64_t));
    if (!mem) {
        free(bm);
        return BM_ENOMEM;
    }
    for (int k = 0; k < bm->nlevels; k++) {
        bm->lv[k] = mem;
        mem += bm->nwords[k];
    }
    bm->resv = mem;
    rebuild(bm);
    *out = bm;
    return BM_OK;
}

void bm_destroy(bm_t *bm)
{
    if (bm) {
        free(bm->lv[0]); /* one block holds every level and resv */
        free(bm);
    }
}

uint32_t bm_size(const bm_t *bm) { return bm->size; }
uint32_t bm_count_allocated(const bm_t *bm) { return bm->n_alloc; }
uint32_t bm_count_reserved(const bm_t *bm) { return bm->n_resv; }
uint32_t bm_count_free(const bm_t *bm) { return bm->size - bm->n_alloc - bm->n_resv; }

int32_t bm_alloc_lowest(bm_t *bm)
{
    int top = bm->nlevels - 1;
    if (bm->lv[top][0] == ONES)
        return BM_EFULL;
    uint32_t i = 0; /* word index at level k, then bit index */
    for (int k = top; k >= 0; k--)
        i = (i << 6) | (uint32_t)ctz64(~bm->lv[k][i]);
    mark_used(bm, 0, i);
    bm->n_alloc++;
    return (int32_t)i;
}

int32_t bm_alloc_many(bm_t *bm, uint32_t n, uint32_t *out)
{
    uint32_t done = 0;
    for (; done < n; done++) {
        int32_t slot = bm_alloc_lowest(bm);
        if (slot < 0)
            break;
        if (out)
            out[done] = (uint32_t)slot;
    }
    return (int32_t)done;
}

static inline int bit(const uint64_t *words, uint32_t i)
{
    return (int)((words[i >> 6] >> (i & 63)) & 1);
}

int bm_alloc(bm_t *bm, uint32_t slot)
{
    if (slot >= bm->size)
        return BM_ERANGE;
    if (bit(bm->lv[0], slot))
        return BM_EBUSY;
    mark_used(bm, 0, slot);
    bm->n_alloc++;
    return BM_OK;
}

int bm_release(bm_t *bm, uint32_t slot)
{
    if (slot >= bm->size)
        return BM_ERANGE;
    if (!bit(bm->lv[0], slot) || bit(bm->resv, slot))
        return BM_ENOENT;
    mark_free(bm, slot);
    bm->n_alloc--;
    return BM_OK;
}

int bm_test(const bm_t *bm, uint32_t slot)
{
    if (slot >= bm->size)
        return BM_ERANGE;
    return bit(bm->lv[0], slot) && !bit(bm->resv, slot);
}

int bm_is_reserved(const bm_t *bm, uint32_t slot)
{
    if (slot >= bm->size)
        return BM_ERANGE;
    return bit(bm->resv, slot);
}

/* Bits of word w that fall inside [lo, hi]. */
static inline uint64_t range_mask(uint32_t w, uint32_t lo, uint32_t hi)
{
    uint64_t m = ONES;
    if (w == lo >> 6)
        m &= ONES << (lo & 63);
    if (w == hi >> 6)
        m &= ONES >> (63 - (hi & 63));
    return m;
}

int32_t bm_reserve_range(bm_t *bm, uint32_t lo, uint32_t hi)
{
    if (lo > hi || hi >= bm->size)
        return BM_ERANGE;
    uint32_t first = lo >> 6, last = hi >> 6;
    for (uint32_t w = first; w <= last; w++)
        if (bm->lv[0][w] & ~bm->resv[w] & range_mask(w, lo, hi))
            return BM_EBUSY;
    int32_t added = 0;
    for (uint32_t w = first; w <= last; w++) {
        uint64_t m = range_mask(w, lo, hi);
        added += popcount64(m & ~bm->resv[w]);
        bm->resv[w] |= m;
        if (bm->lv[0][w] != ONES) {
            bm->lv[0][w] |= m;
            if (bm->lv[0][w] == ONES && bm->nlevels > 1)
                mark_used(bm, 1, w);
        }
    }
    bm->n_resv += (uint32_t)added;
    return added;
}

int32_t bm_next_allocated(const bm_t *bm, uint32_t from)
{
    if (from >= bm->size)
        return BM_ENOENT;
    uint32_t w = from >> 6;
    uint64_t bits = bm->lv[0][w] & ~bm->resv[w] & (ONES << (from & 63));
    while (!bits) {
        if (++w == bm->nwords[0])
            return BM_ENOENT;
        bits = bm->lv[0][w] & ~bm->resv[w];
    }
    return (int32_t)(w * 64 + (uint32_t)ctz64(bits));
}

/* ---- serialization ---- */

typedef struct {
    uint8_t *buf; /* NULL: only measure */
    size_t cap;
    size_t pos;
} writer_t;

static void put_u8(writer_t *o, uint8_t b)
{
    if (o->buf && o->pos < o->cap)
        o->buf[o->pos] = b;
    o->pos++;
}

static void put_le(writer_t *o, uint64_t v, int nbytes)
{
    for (int i = 0; i < nbytes; i++, v >>= 8)
        put_u8(o, (uint8_t)v);
}

static void put_varint(writer_t *o, uint32_t v)
{
    for (; v >= 0x80; v >>= 7)
        put_u8(o, (uint8_t)(v | 0x80));
    put_u8(o, (uint8_t)v);
}

enum { RUN_ZERO = 0, RUN_ONES = 1, RUN_LITERAL = 2 };

static inline int word_kind(uint64_t x) { return x == 0 ? RUN_ZERO : x == ONES ? RUN_ONES : RUN_LITERAL; }

/* Word w of the reserved (allocated = 0) or allocated (1) layer, padding cleared. */
static inline uint64_t layer_word(const bm_t *bm, int allocated, uint32_t w)
{
    uint64_t valid = w == bm->nwords[0] - 1 ? ~tail_padding(bm->size) : ONES;
    return (allocated ? bm->lv[0][w] & ~bm->resv[w] : bm->resv[w]) & valid;
}

static void put_layer(writer_t *o, const bm_t *bm, int allocated)
{
    uint32_t n = bm->nwords[0];
    for (uint32_t w = 0, end; w < n; w = end) {
        int kind = word_kind(layer_word(bm, allocated, w));
        for (end = w + 1; end < n && word_kind(layer_word(bm, allocated, end)) == kind; end++) {
        }
        put_varint(o, (end - w) << 2 | (uint32_t)kind);
        if (kind == RUN_LITERAL)
            for (uint32_t i = w; i < end; i++)
                put_le(o, layer_word(bm, allocated, i), 8);
    }
}

int64_t bm_serialize(const bm_t *bm, uint8_t *buf, size_t cap)
{
    writer_t o = {buf, cap, 0};
    static const uint8_t magic[4] = {'N', 'A', 'B', 'M'};
    for (int i = 0; i < 4; i++)
        put_u8(&o, magic[i]);
    put_le(&o, BM_FORMAT_VERSION, 1);
    put_le(&o, 0, 3); /* flags, padding */
    put_le(&o, bm->size, 4);
    put_le(&o, bm->n_alloc, 4);
    put_le(&o, bm->n_resv, 4);
    put_layer(&o, bm, 0);
    put_layer(&o, bm, 1);
    return (int64_t)o.pos;
}

typedef struct {
    const uint8_t *buf;
    size_t len;
    size_t pos;
} reader_t;

static uint64_t get_le(reader_t *in, int nbytes) /* caller checked the length */
{
    uint64_t v = 0;
    for (int i = 0; i < nbytes; i++)
        v |= (uint64_t)in->buf[in->pos++] << (8 * i);
    return v;
}

static int get_varint(reader_t *in, uint32_t *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        if (in->pos == in->len)
            return BM_EFORMAT;
        uint8_t b = in->buf[in->pos++];
        *v |= (uint32_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80))
            return BM_OK;
    }
    return BM_EFORMAT;
}

static int get_layer(reader_t *in, uint64_t *words, uint32_t n)
{
    for (uint32_t w = 0; w < n;) {
        uint32_t token;
        if (get_varint(in, &token) != BM_OK)
            return BM_EFORMAT;
        uint32_t count = token >> 2, kind = token & 3;
        if (count == 0 || count > n - w || kind > RUN_LITERAL)
            return BM_EFORMAT;
        if (kind == RUN_LITERAL) {
            if ((in->len - in->pos) / 8 < count)
                return BM_EFORMAT;
            for (uint32_t i = 0; i < count; i++)
                words[w + i] = get_le(in, 8);
        } else {
            memset(&words[w], kind == RUN_ONES ? 0xff : 0, (size_t)count * sizeof(uint64_t));
        }
        w += count;
    }
    return BM_OK;
}

static uint32_t popcount_words(const uint64_t *words, uint32_t n)
{
    uint32_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += (uint32_t)popcount64(words[i]);
    return total;
}

/* Decode the two layers into a fresh bm: resv, then allocated bits into lv[0]. */
static int decode_body(bm_t *bm, reader_t *in, uint32_t n_alloc, uint32_t n_resv)
{
    uint32_t n = bm->nwords[0];
    uint64_t pad = tail_padding(bm->size);
    uint64_t *alloc = bm->lv[0];
    if (get_layer(in, bm->resv, n) != BM_OK || get_layer(in, alloc, n) != BM_OK)
        return BM_EFORMAT;
    if (in->pos != in->len || (bm->resv[n - 1] & pad) || (alloc[n - 1] & pad))
        return BM_EFORMAT;
    for (uint32_t w = 0; w < n; w++)
        if (alloc[w] & bm->resv[w])
            return BM_EFORMAT;
    if (popcount_words(alloc, n) != n_alloc || popcount_words(bm->resv, n) != n_resv)
        return BM_EFORMAT;
    for (uint32_t w = 0; w < n; w++)
        alloc[w] |= bm->resv[w];
    bm->n_alloc = n_alloc;
    bm->n_resv = n_resv;
    rebuild(bm);
    return BM_OK;
}

int bm_deserialize(const uint8_t *buf, size_t len, uint32_t expected_size, bm_t **out)
{
    if (!out || (!buf && len))
        return BM_EINVAL;
    if (len < BM_HEADER_SIZE || memcmp(buf, "NABM", 4) != 0)
        return BM_EFORMAT;
    reader_t in = {buf, len, 4};
    if (get_le(&in, 1) != BM_FORMAT_VERSION)
        return BM_EVERSION;
    if (get_le(&in, 3) != 0)
        return BM_EFORMAT;
    uint32_t size = (uint32_t)get_le(&in, 4);
    uint32_t n_alloc = (uint32_t)get_le(&in, 4);
    uint32_t n_resv = (uint32_t)get_le(&in, 4);
    if (size == 0 || size > BM_MAX_SIZE)
        return BM_EFORMAT;
    if (expected_size && size != expected_size)
        return BM_ESIZE;
    bm_t *bm;
    int err = bm_create(size, &bm);
    if (err != BM_OK)
        return err;
    err = decode_body(bm, &in, n_alloc, n_resv);
    if (err != BM_OK) {
        bm_destroy(bm);
        return err;
    }
    *out = bm;
    return BM_OK;
}

const char *bm_strerror(int err)
{
    switch (err) {
    case BM_OK: return "success";
    case BM_ERANGE: return "slot out of range";
    case BM_EINVAL: return "invalid argument";
    case BM_ENOMEM: return "out of memory";
    case BM_EFULL: return "bitmap is full";
    case BM_EBUSY: return "slot already allocated or reserved";
    case BM_ENOENT: return "slot not allocated";
    case BM_EFORMAT: return "malformed serialized bitmap";
    case BM_EVERSION: return "unsupported serialization version";
    case BM_ESIZE: return "serialized bitmap size mismatch";
    default: return "unknown error";
    }
}
