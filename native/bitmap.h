/*
 * Slot bitmap for IPAM: allocates IP offsets / VF indexes from a pool of up to
 * 2^24 slots (an IPv4 /8, or a bounded window of an IPv6 range).
 *
 * Every slot is in exactly one state: free, allocated or reserved.  Reserved
 * slots (network, broadcast, gateway, `exclude` ranges) are never handed out,
 * cannot be released and are counted neither as allocated nor as free.
 *
 * Lowest-free allocation is O(levels) regardless of fullness: above the 64-bit
 * words of the "used" bitmap (allocated | reserved) sit summary levels where
 * bit j says "word j of the level below is full".  2^24 slots need three
 * summary levels (2^18 -> 2^12 -> 2^6 -> 1 word), so finding the lowest free
 * slot is four count-trailing-zeros operations.
 *
 * All functions return negative BM_E* codes on error and never abort.
 * A bm_t is not thread-safe; callers serialize access.
 *
 * Serialized format, version 1 (all integers little-endian):
 *
 *   offset size  field
 *        0    4  magic "NABM"
 *        4    1  version (1)
 *        5    1  flags (must be 0)
 *        6    2  padding (must be 0)
 *        8    4  size: number of slots, 1..2^24
 *       12    4  number of allocated slots
 *       16    4  number of reserved slots
 *       20    .  reserved-layer stream, then allocated-layer stream
 *
 * A layer is a bitmap of ceil(size / 64) 64-bit words (bit i of word w is slot
 * 64*w + i); the two layers are disjoint and bits at or above `size` are zero.
 * Each layer is a stream of runs; a run is a token, varint(count << 2 | kind)
 * (LEB128, at most 4 bytes, count >= 1), where kind is
 *   0: `count` all-zero words,
 *   1: `count` all-ones words,
 *   2: `count` literal words, which follow as 8 bytes each.
 * Runs cover the layer's words exactly.  The encoder emits maximal runs, so
 * an empty, full or contiguously allocated layer takes a few bytes, a sparse
 * one 10-12 bytes per non-empty word, and no layer takes more than its raw
 * 8 bytes per word plus 3.  The decoder accepts any valid run split
 * and checks lengths, version, size, padding bits, disjointness and both
 * counts, returning BM_EFORMAT / BM_EVERSION / BM_ESIZE instead of crashing.
 */
#ifndef NODEAGENT_BITMAP_H
#define NODEAGENT_BITMAP_H

#include <stddef.h>
#include <stdint.h>

#define BM_MAX_SIZE (1u << 24)
#define BM_FORMAT_VERSION 1
#define BM_HEADER_SIZE 20

enum {
    BM_OK = 0,
    BM_ERANGE = -1,   /* slot or range outside [0, size), or lo > hi */
    BM_EINVAL = -2,   /* size 0 or above BM_MAX_SIZE, NULL argument */
    BM_ENOMEM = -3,   /* out of memory */
    BM_EFULL = -4,    /* no free slot */
    BM_EBUSY = -5,    /* slot already allocated or reserved */
    BM_ENOENT = -6,   /* slot not allocated / no allocated slot found */
    BM_EFORMAT = -7,  /* malformed serialized data */
    BM_EVERSION = -8, /* unsupported serialization version */
    BM_ESIZE = -9     /* serialized size differs from the expected size */
};

typedef struct bm bm_t;

/* Create an empty bitmap of `size` slots (1..BM_MAX_SIZE) in *out. */
int bm_create(uint32_t size, bm_t **out);
void bm_destroy(bm_t *bm);
uint32_t bm_size(const bm_t *bm);

/* Allocate the lowest free slot: returns it, or BM_EFULL. */
int32_t bm_alloc_lowest(bm_t *bm);
/* Allocate up to n lowest free slots, storing them ascending in out (may be
 * NULL); returns how many were allocated (fewer than n once full). */
int32_t bm_alloc_many(bm_t *bm, uint32_t n, uint32_t *out);
/* Allocate a given slot: BM_OK, BM_EBUSY or BM_ERANGE. */
int bm_alloc(bm_t *bm, uint32_t slot);
/* Release an allocated slot: BM_OK, BM_ENOENT (free or reserved), BM_ERANGE. */
int bm_release(bm_t *bm, uint32_t slot);
/* 1 if the slot is allocated (resp. reserved), 0 if not, or BM_ERANGE. */
int bm_test(const bm_t *bm, uint32_t slot);
int bm_is_reserved(const bm_t *bm, uint32_t slot);

uint32_t bm_count_allocated(const bm_t *bm);
uint32_t bm_count_reserved(const bm_t *bm);
uint32_t bm_count_free(const bm_t *bm);

/* Reserve [lo, hi] (inclusive).  All-or-nothing: fails with BM_EBUSY if any
 * slot in the range is allocated; already reserved slots are fine.  Returns
 * the number of newly reserved slots, or BM_ERANGE. */
int32_t bm_reserve_range(bm_t *bm, uint32_t lo, uint32_t hi);

/* Lowest allocated slot >= from, or BM_ENOENT. */
int32_t bm_next_allocated(const bm_t *bm, uint32_t from);

/* Serialize into buf (snprintf-style): returns the full encoded length and
 * writes it only if buf is non-NULL; if cap is smaller than the returned
 * length the contents of buf are unspecified. */
int64_t bm_serialize(const bm_t *bm, uint8_t *buf, size_t cap);
/* Decode buf into a new bitmap in *out.  expected_size 0 accepts any size. */
int bm_deserialize(const uint8_t *buf, size_t len, uint32_t expected_size, bm_t **out);

const char *bm_strerror(int err);

#endif /* NODEAGENT_BITMAP_H */
