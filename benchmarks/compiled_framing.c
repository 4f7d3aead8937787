/* A measurement, not part of the package: the nvidia one-machine path's per-image loop in C.
 *
 * benchmarks/compiled_framing.py builds this with the system's gcc and calls frame_run() once per run
 * of records, beside the package's Python loop on the same images, to tell what carrying compiled code
 * would buy (docs/performance.md). It reads each image straight into the run's buffer, walks the JPEG
 * marker segments up to the scan (fewer checks than formats/jpeg.probe: a shipped version would need all
 * of probe's pass-through rules), scans for RecordIO's magic at aligned positions, writes the record's
 * head and im2rec's image header, and extends the CRC-32C over the record while it is in the cache.
 * Anything it does not handle (a short read, a magic inside an image, a header it cannot walk) stops the
 * run and is reported; the measurement then fails rather than measure a different loop.
 */
#include <nmmintrin.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define MAGIC 0xced7230aU

static uint32_t crc32c_extend(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = ~crc & 0xffffffffU;
    while (n && ((uintptr_t)p & 7)) { c = _mm_crc32_u8((uint32_t)c, *p++); n--; }
    while (n >= 8) { c = _mm_crc32_u64(c, *(const uint64_t *)p); p += 8; n -= 8; }
    while (n) { c = _mm_crc32_u8((uint32_t)c, *p++); n--; }
    return ~(uint32_t)c;
}

/* 1 when a JPEG's marker segments lead to a scan and the file ends with EOI; other formats pass (the
 * Python loop stores them unchanged too). */
static int walkable(const uint8_t *d, int64_t size) {
    if (!(d[0] == 0xff && d[1] == 0xd8 && d[2] == 0xff)) return 1;
    int64_t p = 2;
    for (;;) {
        if (p + 4 > size || d[p] != 0xff) return 0;
        uint32_t len = (uint32_t)d[p + 2] << 8 | d[p + 3];
        if (len < 2) return 0;
        if (d[p + 1] == 0xda) break;
        p += 2 + len;
    }
    return d[size - 2] == 0xff && d[size - 1] == 0xd9;
}

/* Frame n images into out; returns the run's size, or -(i + 1) when image i stopped the run. */
int64_t frame_run(int fd, int n, const int64_t *offsets, const int64_t *sizes, const float *labels,
                  const uint64_t *indexes, uint8_t *out, uint32_t *crc) {
    int64_t pos = 0;
    uint32_t c = *crc;
    for (int i = 0; i < n; i++) {
        int64_t size = sizes[i];
        uint8_t *rec = out + pos, *data = rec + 32;
        if (size < 4 || pread(fd, data, (size_t)size, offsets[i]) != size || !walkable(data, size))
            return -(i + 1);
        const uint32_t *words = (const uint32_t *)data; /* the payload's aligned words: 24 + 4k */
        for (int64_t k = 0; k < size / 4; k++)
            if (words[k] == MAGIC) return -(i + 1);
        uint32_t payload = 24 + (uint32_t)size, pad = -payload & 3, flag = 0;
        uint32_t head[2] = {MAGIC, payload};
        uint64_t id2 = 0;
        memcpy(rec, head, 8);
        memcpy(rec + 8, &flag, 4);
        memcpy(rec + 12, &labels[i], 4);
        memcpy(rec + 16, &indexes[i], 8);
        memcpy(rec + 24, &id2, 8);
        memset(data + size, 0, pad);
        c = crc32c_extend(c, rec, 8 + payload + pad);
        pos += 8 + payload + pad;
    }
    *crc = c;
    return pos;
}
